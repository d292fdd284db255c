"""Object storage (``gs://``) for every layer from one setting: the standard ``STORAGE_EMULATOR_HOST``.

Paths go through ``etils.epath`` (which reads and writes ``gs://`` with gcsfs); Orbax writes array data through
tensorstore, which has its own settings. With ``STORAGE_EMULATOR_HOST=http://HOST:PORT`` (a GCS API emulator, as
the tests start one), ``configure()`` derives what the other layers need, each only if the user has not set it:

- ``TENSORSTORE_GCS_HTTP_URL``: tensorstore's GCS endpoint, the emulator;
- ``GOOGLE_AUTH_TOKEN_FOR_TESTING``: a placeholder token, so tensorstore does not look for real credentials;
- ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs's bucket-type probe uses the Storage Control gRPC API,
  which emulators do not serve (each probe would wait for its 60 s timeout).

Against real GCS nothing is derived: gcsfs and tensorstore find the machine's credentials themselves.
``configure()`` runs when ``vlscale`` is imported, before either library reads its environment.
"""

from __future__ import annotations

import os

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def derived_settings(env=None) -> dict[str, str]:
    """The variables ``configure`` would set for this environment (none without an emulator)."""
    env = os.environ if env is None else env
    host = env.get(EMULATOR_ENV, "").strip()
    if not host:
        return {}
    url = host if "://" in host else f"http://{host}"
    want = {"TENSORSTORE_GCS_HTTP_URL": url.rstrip("/"), "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    return {k: v for k, v in want.items() if not env.get(k)}


def configure() -> dict[str, str]:
    """Sets the derived variables in this process (and so in the processes it starts); returns them."""
    settings = derived_settings()
    os.environ.update(settings)
    return settings
