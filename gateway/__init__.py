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
  n}`, or `{"status": "path_busy", "time_remaining": <s>}` while an overlapping lease lives
  (backend/lease_service.go; the publisher reads it as an integer, swissknife_lease_json.cc),
  or `{"status": "error", "reason": ...}`. Leases last `max_lease_time` (7200 s).
* Payload (cvmfs/session_context.cc, cvmfs/pack.cc): body = JSON head
  `{"session_token", "payload_digest", "header_size", "api_version"}` then an object pack:
  header `V2\\nS<total bytes>\\nN<count>\\n--\\n` + one line per object
  `C <hash with suffix> <size>\\n` (`N <hash> <size> <base64url name>` for named files), then
  the objects' bytes in order. `payload_digest` is the hex SHA-1 of the pack header alone; each
  object's bytes must hash to its name (objects are sent as stored: compressed, spec §1.4).
* Commit: body `{"old_root_hash", "new_root_hash", "tag_name", "tag_channel",
  "tag_description"}`; the gateway applies what changed between the publisher's old and new
  catalogs under the leased path to the repository's current revision, signs it and replies
  `{"status": "ok", "final_revision": n}` (cvmfs/receiver/commit_processor.cc).
"""
