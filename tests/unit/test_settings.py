"""Settings: one precedence (default < files < env < CLI), unknown keys and bad values named, sources, the example."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from infaas_cli.errors import EXIT_USAGE, exit_code
from infaas_cli.policy.autoscale import AutoscaleConfig
from infaas_cli.policy.cluster_autoscale import ClusterAutoscaleConfig
from infaas_cli.settings import (SECTIONS, Settings, SettingsError, all_keys, env_var, load_settings, override,
                                 section_keys, to_toml, with_home_defaults)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "infaas.toml"


@pytest.fixture
def layout(tmp_path):
    """A system file and a home, both empty unless a test writes them; never the real /etc or ~."""
    system, home = tmp_path / "etc" / "infaas.toml", tmp_path / "home"
    system.parent.mkdir()
    home.mkdir()

    def load(config_file=None, env=None, overrides=None):
        return load_settings(config_file, env or {}, overrides, home=home, system_file=system)

    return system, home, load


def test_defaults_mirror_the_policies(layout):
    _, _, load = layout
    settings, sources = load()
    assert settings == Settings()
    assert set(sources.values()) == {"default"} and set(sources) == set(all_keys())
    assert settings.autoscale == AutoscaleConfig()
    assert settings.cluster.policy() == ClusterAutoscaleConfig()
    assert settings.master.policy == "infaas" and settings.master.client_endpoint == "tcp://127.0.0.1:7010"
    assert settings.worker.master_endpoint == settings.master.worker_endpoint


def test_precedence_default_system_home_config_env_cli(layout, tmp_path):
    system, home, load = layout
    system.write_text('[master]\npolicy = "static"\nmax_attempts = 5\npending_timeout_s = 10\n'
                      '[autoscale]\nwindow_s = 2.0\n')
    (home / "config.toml").write_text('[master]\nmax_attempts = 6\n[cluster]\nmin_workers = 2\n')
    given = tmp_path / "given.toml"
    given.write_text('[master]\npolicy = "replicate"\n[cluster]\nmax_workers = 4\n')
    env = {"INFAAS_MASTER_POLICY": "infaas", "INFAAS_AUTOSCALE_WINDOW_S": "3", "INFAAS_CLUSTER_MAX_WORKERS": "8"}
    settings, sources = load(given, env, {"autoscale.window_s": 4.0, "master.log_level": None})
    assert settings.master.pending_timeout_s == 10.0 and sources["master.pending_timeout_s"] == str(system)
    assert settings.master.max_attempts == 6 and sources["master.max_attempts"] == str(home / "config.toml")
    assert settings.cluster.min_workers == 2
    assert settings.master.policy == "infaas" and sources["master.policy"] == "INFAAS_MASTER_POLICY"
    assert settings.cluster.max_workers == 8 and sources["cluster.max_workers"] == "INFAAS_CLUSTER_MAX_WORKERS"
    assert settings.autoscale.window_s == 4.0 and sources["autoscale.window_s"] == "cli"
    assert settings.master.log_level == "INFO" and sources["master.log_level"] == "default"  # None: not given


def test_every_key_has_an_env_var_and_the_old_names_still_work(layout):
    _, _, load = layout
    assert env_var("autoscale.overload_slack_fraction") == "INFAAS_AUTOSCALE_OVERLOAD_SLACK_FRACTION"
    settings, sources = load(env={"INFAAS_MASTER": "tcp://10.0.0.1:7010", "INFAAS_CURVE_SECRET_KEY": "/k/c.key_secret",
                                  "INFAAS_MASTER_PUBLIC_KEY": "/k/master.key", "INFAAS_SCALE_OUT_COMMAND": "add-host",
                                  "INFAAS_SCALE_IN_COMMAND": "remove-host",
                                  "INFAAS_AUTOSCALE_OVERLOAD_SLACK_FRACTION": "0.25"})
    assert settings.client.master == "tcp://10.0.0.1:7010" and sources["client.master"] == "INFAAS_MASTER"
    assert settings.security.client_keys() == ("/k/c.key_secret", "/k/master.key")
    assert (settings.cluster.scale_out_command, settings.cluster.scale_in_command) == ("add-host", "remove-host")
    assert settings.autoscale.overload_slack_fraction == 0.25
    # the canonical name wins over its alias
    settings, sources = load(env={"INFAAS_MASTER": "tcp://a:1", "INFAAS_CLIENT_MASTER": "tcp://b:2"})
    assert settings.client.master == "tcp://b:2" and sources["client.master"] == "INFAAS_CLIENT_MASTER"


def test_env_strings_are_typed(layout):
    _, _, load = layout
    settings, _ = load(env={"INFAAS_WORKER_CORES": "4", "INFAAS_WORKER_MAX_BATCH_WAIT_MS": "0.5",
                            "INFAAS_WORKER_WORKER_ID": "w-1", "INFAAS_MASTER_DATA_DIR": ""})
    assert settings.worker.cores == 4 and isinstance(settings.worker.cores, int)
    assert settings.worker.max_batch_wait_ms == 0.5 and settings.worker.worker_id == "w-1"
    assert settings.master.data_dir is None  # an empty optional is unset


@pytest.mark.parametrize("text,message", [
    ('[master]\npolcy = "static"\n', "unknown key master.polcy in {file}; known keys of [master]: client_endpoint"),
    ('[mastr]\npolicy = "static"\n', "unknown section [mastr] in {file}"),
    ('[master]\nmax_attempts = "three"\n', "master.max_attempts must be an integer, not 'three' (set by {file})"),
    ('[master]\npolicy = "fastest"\n', "master.policy must be one of infaas, fixed-peak, fixed-autoscale"),
    ('[autoscale]\nhold_s = 1.0\n', "autoscale.hold_s set by {file}"),
    ('[cluster]\nmin_workers = 0\n', "cluster.min_workers set by {file}"),
    ('[master\n', "{file} is not valid TOML"),
])
def test_bad_files_name_the_key_and_the_file(layout, tmp_path, text, message):
    _, _, load = layout
    given = tmp_path / "bad.toml"
    given.write_text(text)
    with pytest.raises(SettingsError) as info:
        load(given)
    assert message.format(file=given) in str(info.value)
    assert exit_code(info.value) == EXIT_USAGE


def test_bad_env_and_cli_values_name_their_source(layout):
    _, _, load = layout
    with pytest.raises(SettingsError, match=r"worker.cores must be an integer, not '2.5' \(set by INFAAS_WORKER_CORES\)"):
        load(env={"INFAAS_WORKER_CORES": "2.5"})
    with pytest.raises(SettingsError, match=r"master.heartbeat_interval_s must be a number, not 'soon' \(set by cli\)"):
        load(overrides={"master.heartbeat_interval_s": "soon"})
    with pytest.raises(SettingsError, match="unknown key master.polcy"):
        load(overrides={"master.polcy": "static"})
    with pytest.raises(SettingsError, match="--config .* does not exist"):
        load(Path("/nonexistent/infaas.toml"))


def test_prediction_cache_default_is_off_and_bounded(layout, tmp_path):
    _, _, load = layout
    assert load()[0].master.prediction_cache_mib == 0  # off unless a model is registered with --cache-mib
    assert load(env={"INFAAS_MASTER_PREDICTION_CACHE_MIB": "64"})[0].master.prediction_cache_mib == 64
    given = tmp_path / "cache.toml"
    given.write_text("[master]\nprediction_cache_mib = -1\n")
    with pytest.raises(SettingsError, match=r"master.prediction_cache_mib must be a size in MiB from 0 .*"
                                            rf"\(master.prediction_cache_mib set by {re.escape(str(given))}\)"):
        load(given)
    with pytest.raises(SettingsError, match=r"master.prediction_cache_mib must be an integer, not '1.5'"):
        load(overrides={"master.prediction_cache_mib": "1.5"})


def test_relative_paths_in_a_file_are_relative_to_it(layout, tmp_path):
    _, _, load = layout
    given = tmp_path / "conf" / "infaas.toml"
    given.parent.mkdir()
    given.write_text('[security]\ncurve_secret_key = "keys/m.key_secret"\n[master]\ndata_dir = "/abs/master"\n')
    settings, _ = load(given)
    assert settings.security.curve_secret_key == str(tmp_path / "conf" / "keys" / "m.key_secret")
    assert settings.master.data_dir == "/abs/master"


def test_only_one_client_key_is_an_error(layout):
    _, _, load = layout
    settings, _ = load(env={"INFAAS_CURVE_SECRET_KEY": "/k/c.key_secret"})
    with pytest.raises(SettingsError, match="needs both"):
        settings.security.client_keys()


def test_home_defaults_and_overrides(tmp_path):
    settings = with_home_defaults(Settings(), tmp_path)
    assert settings.master.data_dir == str(tmp_path / "master")
    assert settings.worker.cache_dir == str(tmp_path / "worker-cache")
    changed = override(settings, {"master.policy": "static", "worker.cores": "2", "client.master": None})
    assert changed.master.policy == "static" and changed.worker.cores == 2 and changed.master.data_dir == str(tmp_path / "master")
    with pytest.raises(SettingsError, match="autoscale.hold_s"):
        override(settings, {"autoscale.hold_s": 1})


def test_to_toml_loads_back(layout, tmp_path):
    _, _, load = layout
    settings = override(Settings(), {"master.policy": "static", "cluster.scale_in_command": 'echo "bye"',
                                     "autoscale.window_s": 1, "worker.worker_id": "w"})
    path = tmp_path / "dump.toml"
    path.write_text(to_toml(settings))
    assert load(path)[0] == settings
    assert to_toml(settings, only_changed=True).count("=") == 4


def test_the_example_file_loads_and_lists_every_key_at_its_default(layout):
    _, _, load = layout
    assert load(EXAMPLE)[0] == Settings()  # everything commented out: the defaults
    text = EXAMPLE.read_text()
    defaults = Settings().to_dict()
    section = None
    listed: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"# (\w+) = (\S+)", line):
            listed[f"{section}.{m.group(1)}"] = m.group(2)
    assert set(listed) == set(all_keys()), set(all_keys()) ^ set(listed)
    for key, shown in listed.items():
        sect, name = key.split(".")
        default = defaults[sect][name]
        if default is not None:
            assert _toml_scalar(shown) == default, (key, shown, default)


def test_the_example_file_uncommented_is_valid(layout, tmp_path):
    _, _, load = layout
    uncommented = re.sub(r"(?m)^# (\w+ = )", r"\1", EXAMPLE.read_text())
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    settings, sources = load(path)
    assert all(source == str(path) for source in sources.values())
    assert settings.cluster.max_workers == 16


def test_sections_are_the_documented_ones():
    assert list(SECTIONS) == ["master", "worker", "autoscale", "cluster", "security", "client", "drift", "gateway"]
    assert SECTIONS["autoscale"] is AutoscaleConfig
    cluster_policy_fields = {f.name for f in dataclasses.fields(ClusterAutoscaleConfig)}
    assert cluster_policy_fields <= set(section_keys("cluster"))


def _toml_scalar(text: str):
    import tomllib

    return tomllib.loads(f"v = {text}")["v"]
