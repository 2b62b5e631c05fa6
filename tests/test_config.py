"""Settings precedence: flag > RETRV_* environment > config file > default; index paths."""

from __future__ import annotations

import pytest

from retrv.config import Settings, data_dir, load_settings, resolve_index_path


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('encoder = "text"\nbatch_size = 8\nrerank_k = 20\n')
    env = {"RETRV_CONFIG": str(config), "RETRV_BATCH_SIZE": "16"}
    settings = load_settings({"batch_size": None, "rerank_k": 30}, env=env)
    assert settings.encoder == "text"  # file
    assert settings.batch_size == 16  # env beats file; None means "flag not given"
    assert settings.rerank_k == 30  # flag beats file
    assert settings.device == Settings().device  # default


def test_bad_config_file_is_one_clear_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("encoder = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_settings(env={"RETRV_CONFIG": str(config)})
    config.write_text('encodr = "lite"\n')
    with pytest.raises(ValueError, match="unknown setting 'encodr'"):
        load_settings(env={"RETRV_CONFIG": str(config)})


def test_bad_values_name_their_source(tmp_path):
    with pytest.raises(ValueError, match="RETRV_BATCH_SIZE"):
        load_settings(env={"RETRV_CONFIG": str(tmp_path / "none.toml"), "RETRV_BATCH_SIZE": "many"})
    with pytest.raises(ValueError, match="--fusion-weight"):
        load_settings({"fusion_weight": "heavy"}, env={"RETRV_CONFIG": str(tmp_path / "none.toml")})


def test_index_names_live_under_the_data_dir_and_paths_are_used_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    assert resolve_index_path("photos") == data_dir() / "indexes" / "photos"  # a name, even if a folder exists
    assert resolve_index_path("./photos-index") == tmp_path / "photos-index"
    assert resolve_index_path(tmp_path / "x") == tmp_path / "x"
    assert resolve_index_path(None) == data_dir() / "indexes" / "default"
