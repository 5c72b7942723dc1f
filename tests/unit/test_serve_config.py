"""The `serve deploy` file written from the Hydra config is one Ray Serve accepts, and carries the config's values."""

import yaml


def test_deploy_config_is_a_valid_serve_config_carrying_the_hydra_values(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from actors.serve_app import ServeArgs
    from apps import serve_config
    from apps.config import compose
    from core.data import storage

    config = compose(
        [
            f"paths.root={tmp_path}",
            "serve.max_batch_size=8",
            "serve.port=8100",
            "serve.request_timeout_s=60",
            "+serve.autoscaling={min_replicas: 1, max_replicas: 3, target_ongoing_requests: 2}",
        ]
    )
    summary = serve_config.run(config)
    data = yaml.safe_load(storage.read_bytes(summary["out"]))
    schema = ServeDeploySchema.model_validate(data)
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8100
    app, health = schema.applications
    assert app.import_path == "actors.serve_app:build_app" and app.route_prefix == "/"
    assert health.import_path == "actors.serve_app:build_health_app" and health.route_prefix == "/healthz"
    assert health.args == {"app_name": app.name}
    assert schema.http_options.request_timeout_s == config.serve.request_timeout_s
    args = ServeArgs(**app.args)
    assert args.apprentice == config.paths.apprentice and args.serve.max_batch_size == 8
    assert args.serve.autoscaling == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2}
