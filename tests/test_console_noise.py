"""No console noise from dependencies during normal runs: processing a night prints no Python warning.

astropy truncates a header card's comment that does not fit beside its value and says so on stderr
("WARNING: VerifyWarning: Card is too long, comment will be truncated."), once per CAL file: a long
plate-solve failure reason in ``ASTCWERR``, a long raw file name in ``ASTCRAW`` or ``CALFILE``. The
cards are now written so that the comment is left out when it does not fit (``fitsio.card_entry``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
from astropy.io import fits
from conftest import REPO, small_spec

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats import keywords as kw
from astep_cal.formats.fitsio import card_entry, set_card
from astep_cal.formats.products import read_cal_header

# A raw name as long as a real one can be (an object and a filter in it) and not ASCII: percent-encoded
# in ASTCRAW, it leaves no room for the card's comment.
LONG_NAME = "2026-07-01_20.00.00_SCIENCE_WASP-19b_champ_nord_Ω.fits"


def python_warnings(stderr: str) -> list[str]:
    """Lines of stderr that are Python (or astropy) warnings, not astep-cal's structured events."""
    return [line for line in stderr.splitlines() if "Warning" in line and not line.lstrip().startswith("{")]


def test_a_night_whose_solves_fail_prints_no_warning(tmp_path):
    """`astep-cal once` on a night where solve-field has no index files (a long failure reason in every
    CAL file) and a frame has a long non-ASCII name: stderr holds JSON events only."""
    root = tmp_path / "root"
    spec = small_spec(n_science=2, n_cosmic_rays=10)
    truth = make_night(root, spec)
    first = truth.science_files[0]
    first.rename(first.with_name(LONG_NAME))
    no_index = tmp_path / "no-index.cfg"
    no_index.write_text("cpulimit 10\n")  # solve-field finds no index and fails with a long message
    config = tmp_path / "astep-cal.toml"
    config.write_text(f'[astrometry]\nconfig_file = "{no_index}"\nmax_tries = 1\n')
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # every category shown (DeprecationWarning too)
    done = subprocess.run([sys.executable, "-m", "astep_cal", "once", str(root), "--config", str(config)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 1, done.stderr[-3000:]  # the solves failed: attention
    assert '"event": "frame_failed"' in done.stderr and "Traceback" not in done.stderr
    assert python_warnings(done.stderr) == [], python_warnings(done.stderr)
    cal_dir = root / spec.date / f"{spec.date}-CAMS_CAL"
    header = read_cal_header(cal_dir / LONG_NAME.replace(".fits", "_CAL.fits"))  # compressed: HDU 1
    assert header[kw.WCS_STATUS.name] == "failed"
    assert header[kw.WCS_ERROR.name].startswith("solve-field exited with")
    assert header[kw.RAW.name].endswith("%CE%A9.fits")


@pytest.mark.parametrize("value", ["x" * 30, "x" * 39, "x" * 40, "x" * 55, "x" * 68, "x" * 69, "x" * 120,
                                   12345, 1.23456789012e-7, True, "it's"])
@pytest.mark.parametrize("comment", ["", "why the plate solve failed", "c" * 60])
def test_cards_never_make_astropy_truncate_a_comment(value, comment):
    """The comment is kept whenever astropy would keep it whole, dropped otherwise; never a warning."""
    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        header = fits.Header()
        header["ASTCWERR"] = (value, comment)
        header.tostring()
    fits_whole = not any("too long" in str(w.message) for w in plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        header = fits.Header()
        set_card(header, "ASTCWERR", value, comment)
        header.tostring()
    assert header["ASTCWERR"] == value
    assert header.comments["ASTCWERR"] == (comment if fits_whole else "")
    assert card_entry("ASTCWERR", value, comment) == (value, comment if fits_whole else "")
