"""The header keywords astep-cal writes, defined once: name and comment of every card.

CAL files and masters carry their provenance in ``ASTC*`` cards; :mod:`recovery` rebuilds a lost
ledger from them, :mod:`products` and :mod:`astrometry` write them, docs/pages/data-products.md ("CAL header
keywords") documents them. A keyword is used by its constant here, never by a string typed again elsewhere, so
the writer and the readers cannot drift apart. (Quality cards — FWHM, stars, sky noise — are the
quality module's.) No numpy or astropy: the light commands may import it.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Keyword(NamedTuple):
    name: str
    comment: str

    def card(self, value: Any, comment: str | None = None) -> tuple[str, tuple[Any, str]]:
        """``(name, (value, comment))``: an entry of the cards dicts that the writers take (they leave the
        comment out when it does not fit beside the value: ``fitsio.card_entry``)."""
        return self.name, (value, self.comment if comment is None else comment)


# Every astep-cal product
VERSION = Keyword("ASTCVER", "astep-cal version")

# Masters
MASTER_TYPE = Keyword("ASTCTYPE", "astep-cal master frame type")
MASTER_NIGHT = Keyword("ASTCNITE", "night the master was made from")

# CAL files: the calibration used
DARK = Keyword("ASTCDARK", "master dark used")
DARK_SCALE = Keyword("ASTCDSCL", "dark scale factor (exptime ratio)")
BIAS_ORIGIN = Keyword("ASTCBORG", "bias used when scaling the dark")
FLAT = Keyword("ASTCFLAT", "")  # a path relative to the data root: no room left for a comment
FLAT_NIGHT = Keyword("ASTCFNIT", "night the master flat was made from")
GAIN = Keyword("ASTCGAIN", "[e-/ADU] gain applied")
GAIN_SOURCE = Keyword("ASTCGSRC", "gain from: header, measured or default")
READ_NOISE = Keyword("ASTCRDN", "[e-] read noise of the noise model")
READ_NOISE_SOURCE = Keyword("ASTCRSRC", "read noise from: header, measured or default")
GAIN_MEASURED = Keyword("ASTCGMEA", "[e-/ADU] gain measured from the night's flats")
READ_NOISE_MEASURED = Keyword("ASTCRMEA", "[ADU] read noise measured from the night")
DARK_CURRENT = Keyword("ASTCDCUR", "[ADU/s] median dark current of the night")
TRIM = Keyword("ASTCTRIM", "[px] edge flagged BORDER in MASK")

# CAL files: what the ledger needs to be rebuilt from the file alone (recovery.py)
RAW = Keyword("ASTCRAW", "raw frame calibrated")
RAW_FINGERPRINT = Keyword("ASTCRAWF", "raw file size:mtime_ns")
CONFIG = Keyword("ASTCCONF", "fingerprint of the calibration settings")

# CAL files: astrometry
WCS_STATUS = Keyword("ASTCWCS", "astrometry status: pending, solved, failed")
WCS_MATCHED = Keyword("ASTCWNM", "stars matched to the index in the solve")
WCS_RESIDUAL = Keyword("ASTCWRES", "[arcsec] rms of those matches")
WCS_ERROR = Keyword("ASTCWERR", "why the plate solve failed")

# CAL files: what calibration did to the pixels
N_COSMIC = Keyword("NCOSMIC", "pixels replaced as cosmic-ray hits")
N_SATURATED = Keyword("NSATUR", "saturated pixels")
SKY_LEVEL = Keyword("SKYLEVEL", "[e-] median sky level")

# Catalogues: the science target the raw header names (formats/header_profile.py), for the light curves
TARGET_NAME = Keyword("TARGNAME", "science target named by the raw header")
TARGET_RA = Keyword("TARGRA", "[deg] RA of that target (ICRS)")
TARGET_DEC = Keyword("TARGDEC", "[deg] Dec of that target (ICRS)")
TARGET_SOURCE = Keyword("TARGSRC", "raw header keywords the target was read from")

# Written by astep-cal, to be read back by recovery (these must be in every CAL file)
PROVENANCE_NEEDED = (VERSION, RAW, RAW_FINGERPRINT, CONFIG)
