"""The wire protocol both sides share: keys and trust, request signing and verification, the
signed client, records, the pure policy (one safety view), the cloud spec, the bootstrap lists.

It imports neither side: not the agent (`node`), not the workspace (`repl`, `ops`), not the
local cloud tool (`localcloud`). A contract test (tests/test_imports.py) keeps it so.

Modules: `keys` (ed25519 keys, fingerprints), `trust` (the trust file), `signing` (signed
requests, the verifier and its nonce journal), `client` (the signed node API client), `records`,
`policy`, `spec`, `lists` (the bootstrap list: `format`, and one module per source: `file`,
`http`, `git`), and the small helpers `files` (atomic writes), `toml` (TOML through tomli_w),
`names`, `ports`, `problems`.
"""
