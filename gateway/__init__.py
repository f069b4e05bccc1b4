"""A CernVM-FS repository gateway: stock `cvmfs_server` publishers write through it.

Protocol (API v1, read from the cvmfs 2.11.5 sources; nothing copied):

* Routes (gateway/internal/gateway/frontend/frontend.go): `GET /api/v1`, `GET /repos[/<name>]`,
  `GET /leases[/<token>]`, `POST /leases` (new lease), `POST /leases/<token>` (commit),
  `DELETE /leases/<token>` (cancel), `POST /payloads` and `POST /payloads/<token>` (object
  packs), `DELETE /leases-by-path/<fqrn>/<path>` (drop leases).
* Authentication (frontend/authz.go, hmac.go; cvmfs/swissknife_lease_curl.cc): header
  `Authorization: <key id> <base64(hex(HMAC-SHA1(secret, message)))>`; the message is the
  body of a new lease, the token for a commit or cancel, the URL path of a drop, and the JSON
  head of a payload (its length in the `Message-Size` header) or the token in the
  per-token form. Keys are the `.gw` files `plain_text <id> <secret>` (one per repository here).
* New lease: body `{"path": "<fqrn>/<sub>", "api_version": "2", "hostname": "..."}`
  (api_version is a string); reply `{"status": "ok", "session_token": ..., "max_api_version":
  n}`, or `{"status": "path_busy", "time_remaining": "1h59m58.5s"}` while an overlapping
  lease lives: Go's duration string (frontend/leases.go), which 2.11's `cvmfs_server
  transaction` reads as a string, prints and retries on (publish/repository_session.cc; only
  the legacy `cvmfs_swissknife lease` wanted an integer), or `{"status": "error", "reason":
  ...}`. Leases last `max_lease_time` (7200 s). Overlap is per path segment (pathutil.go's
  rule; lease_entity.go's SQL compares string prefixes, so there `/a/b` also blocks `/a/bc`:
  not here); a lease on `<fqrn>/` overlaps every path.
* Reads: `GET /leases` → `{"status": "ok", "data": {"<fqrn>/<path>": lease}}`, `GET
  /leases/<token>` → `{"data": lease}` (no status; unknown or expired: HTTP 500, text
  `invalid lease`), a lease `{"key_id", "path", "expires": "2026-12-06 02:55:00.123 +0000
  UTC", "hostname"}` (Go's time format, empty fields left out); `GET /api/v1` → a welcome.
* Every reply to a POST or DELETE is JSON: refusals with HTTP 200, an undecodable body (not
  JSON, a non-numeric api_version or header_size, a missing Message-Size) with HTTP 400 as the
  Go gateway answers it, an unexpected failure with HTTP 500: 2.11's MakeEndRequest and
  SessionContext::DoUpload dereference the parsed reply unchecked, so a non-JSON error text
  (the Go gateway's 400s for unreadable bodies, a framework's error page) would crash the
  publisher.
* Admin calls (`POST /repos/<name>`, `POST /gc`) need an admin key upstream; this gateway has
  only repository keys and answers `no_admin_key`. `DELETE /leases-by-path/...` takes the
  repository's own key (restricted to its path). Notifications (`/notifications/...`) are
  not served.
* Payload (cvmfs/session_context.cc, cvmfs/pack.cc): body = JSON head
  `{"session_token", "payload_digest", "header_size", "api_version"}` then an object pack:
  header `V2\\nS<total bytes>\\nN<count>\\n--\\n` + one line per object
  `C <hash with suffix> <size>\\n` (`N <hash> <size> <base64url name>` for named files), then
  the objects' bytes in order. `payload_digest` is the hex SHA-1 of the pack header alone; each
  object's bytes must hash to its name (objects are sent as stored: compressed, spec §1.4).
* Commit: body `{"old_root_hash", "new_root_hash", "tag_name", "tag_channel",
  "tag_description"}`; the gateway applies what changed between the publisher's old and new
  catalogs under the leased path to the repository's current revision, signs it and replies
  `{"status": "ok", "final_revision": n}` (cvmfs/receiver/commit_processor.cc). The 2.11
  publisher checks only `status` == "ok" and prints any other reply whole
  (swissknife_lease_curl.cc MakeEndRequest).

Each commit is a `gateway-commit` Prefect run started by the gateway process
(flows/gateway_commit.py), which replies as soon as the run has published
(gateway/commit_runner.py): the lock's release, the change-summary artifact and the run's final
state follow the reply (about 0.9 s less per commit, bench/README.md). A failed commit publishes
nothing and keeps the lease and the objects; transient faults are retried inside the run, then
the publisher is told to publish again. The run is not a deployment, so the UI has no Retry
for it: the publisher's `cvmfs_server publish` is the retry, and the failed run's artifact says
so. The run of a gateway process that died mid-commit is ended as Crashed by the other copies'
(or the restarted gateway's) sweep, gateway/orphans.py.
"""
