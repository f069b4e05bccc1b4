// oidc-provider's storage adapter over plain files: one JSON file per stored item under
// <state dir>/<model>/, so sessions, grants and refresh tokens survive a restart of the provider.
// Small and single-process by design: the local provider serves a handful of demo users.
import fs from 'node:fs';
import path from 'node:path';

const now = () => Math.floor(Date.now() / 1000);

export function fileAdapterFor(root) {
  fs.mkdirSync(root, { recursive: true, mode: 0o700 });

  function removeExpired() {
    for (const model of fs.readdirSync(root)) {
      const dir = path.join(root, model);
      for (const name of fs.readdirSync(dir)) {
        const file = path.join(dir, name);
        try {
          const { expiresAt } = JSON.parse(fs.readFileSync(file, 'utf8'));
          if (expiresAt && expiresAt <= now()) fs.rmSync(file, { force: true });
        } catch {
          fs.rmSync(file, { force: true }); // a half-written file of a killed process
        }
      }
    }
  }
  removeExpired();

  return class FileAdapter {
    constructor(model) {
      this.dir = path.join(root, model);
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    }

    file(id) {
      return path.join(this.dir, `${encodeURIComponent(id)}.json`);
    }

    read(file) {
      let entry;
      try {
        entry = JSON.parse(fs.readFileSync(file, 'utf8'));
      } catch {
        return undefined;
      }
      if (entry.expiresAt && entry.expiresAt <= now()) {
        fs.rmSync(file, { force: true });
        return undefined;
      }
      return entry;
    }

    all() {
      return fs.readdirSync(this.dir).map((name) => this.read(path.join(this.dir, name))).filter(Boolean);
    }

    async upsert(id, payload, expiresIn) {
      const entry = { payload, expiresAt: expiresIn ? now() + expiresIn : undefined };
      const file = this.file(id);
      const partial = `${file}.${process.pid}.tmp`;
      fs.writeFileSync(partial, JSON.stringify(entry), { mode: 0o600 });
      fs.renameSync(partial, file); // readers never see half a file
    }

    async find(id) {
      return this.read(this.file(id))?.payload;
    }

    async findByUid(uid) {
      return this.all().find((entry) => entry.payload.uid === uid)?.payload;
    }

    async findByUserCode(userCode) {
      return this.all().find((entry) => entry.payload.userCode === userCode)?.payload;
    }

    async consume(id) {
      const file = this.file(id);
      const entry = this.read(file);
      if (!entry) return;
      entry.payload.consumed = now();
      await this.upsert(id, entry.payload, entry.expiresAt ? entry.expiresAt - now() : undefined);
    }

    async destroy(id) {
      fs.rmSync(this.file(id), { force: true });
    }

    async revokeByGrantId(grantId) {
      for (const name of fs.readdirSync(this.dir)) {
        const file = path.join(this.dir, name);
        if (this.read(file)?.payload.grantId === grantId) fs.rmSync(file, { force: true });
      }
    }
  };
}
