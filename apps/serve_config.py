"""Write a `serve deploy` / `serve run` config file from the Hydra config, which stays the source of truth:

    python -m apps.serve_config experiment=demo      # -> outputs/demo/serve_config.yaml
    serve run outputs/demo/serve_config.yaml          # or, on a running cluster:
                                                      # serve deploy outputs/demo/serve_config.yaml

To swap in a new checkpoint without downtime, write the file again with another `paths.apprentice` and deploy it:
only the apprentice deployment's `user_config` changes, so Serve reconfigures its replicas in place.
"""

from __future__ import annotations

import yaml

from actors.serve_app import HEALTH_APP_SUFFIX
from apps.config import stage_main
from apps.serve import APP_NAME, http_options, serve_args
from core.config import PipelineConfig
from core.data import storage


def deploy_config(config: PipelineConfig) -> dict:
    """A Ray Serve config (`ServeDeploySchema`): the application built by `actors.serve_app:build_app`, and beside it
    the health application at /healthz."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": http_options(config),
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "actors.serve_app:build_app",
                "args": serve_args(config).model_dump(),
            },
            {
                "name": APP_NAME + HEALTH_APP_SUFFIX,
                "route_prefix": "/healthz",
                "import_path": "actors.serve_app:build_health_app",
                "args": {"app_name": APP_NAME},
            },
        ],
    }


def run(config: PipelineConfig) -> dict:
    out = storage.join(config.paths.root, "serve_config.yaml")
    storage.write_bytes(out, yaml.safe_dump(deploy_config(config), sort_keys=False).encode())
    return {"stage": "serve_config", "out": out, "run": f"serve run {out}", "deploy": f"serve deploy {out}"}


main = stage_main(run)

if __name__ == "__main__":
    main()
