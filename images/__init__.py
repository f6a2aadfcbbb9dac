"""Images built from recipes in the repository: Debian packages (mmdebstrap) plus files of the
repository, this checkout's Python packages and the release material given at build, written as a
tar that `docker load` takes, cached and tagged by a content hash (docs/node-image.md).

`images` imports only `wire` (pyproject.toml [tool.importlinter]); `localcloud` and the tests use
it, the agent never does.
"""
