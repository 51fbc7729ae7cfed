"""Settings: defaults, the shipped file, and clear refusals."""

from pathlib import Path

import pytest

from astep_cal.support.config import ConfigError, Settings, load_settings, settings_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_documents_exactly_the_defaults():
    assert load_settings(REPO / "etc" / "astep-cal.toml") == Settings()


@pytest.mark.parametrize("data, message", [
    ({"astrometry": {"scale_low": 1}}, "unknown setting astrometry.scale_low"),
    ({"mem_limit_gb": "lots"}, "mem_limit_gb: expected float"),
    ({"cosmics": {"sepmed": 1}}, "cosmics.sepmed: expected bool"),
    ({"astrometry": {"scale_low_deg": 2.0, "scale_high_deg": 1.0}}, "scale_low_deg"),
    ({"logging": {"format": "xml"}}, "logging.format"),
    ({"cosmics": 3}, "must be a table"),
])
def test_bad_settings_are_refused_with_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("mem_limit_gb = = 2")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings(bad)


def test_fingerprint_changes_with_the_section():
    a = settings_from_dict({})
    b = settings_from_dict({"cosmics": {"niter": 3}})
    assert a.fingerprint("cosmics") != b.fingerprint("cosmics")
    assert a.fingerprint("calibration") == b.fingerprint("calibration")
