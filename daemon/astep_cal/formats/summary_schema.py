"""A received ``summary.json`` checked before ``astep-cal report`` renders it.

The summary travels (by satellite e-mail, copied by hand): the one given to ``report`` may be damaged
or crafted. The renderer indexes into it freely, so its layout is checked first with the ledger's
specification language (:mod:`~astep_cal.state.ledger_schema`), and a document that does not match is
refused with the place that is wrong — never a traceback.
"""

from __future__ import annotations

from typing import Any

from astep_cal.state.ledger_schema import ANY, NUM, OPT_NUM, ListOf, MapOf, Record, check

_INT = int
_OPT_INT = (int, type(None))
COUNTS = Record({key: _INT for key in ("frames", "calibrated", "solved", "failed", "blocked", "retries_pending",
                                      "problems")},
                ("frames", "calibrated", "solved", "failed", "blocked", "retries_pending", "problems"))
MEDIANS = Record({key: OPT_NUM for key in ("sky_e", "sky_noise_e", "n_stars", "fwhm_arcsec", "ellipticity",
                                          "wcs_residual_arcsec")},
                 ("sky_e", "sky_noise_e", "n_stars", "fwhm_arcsec", "ellipticity", "wcs_residual_arcsec"))
MASTERS = Record({"flat": Record({"origin": str, "n_inputs": _OPT_INT, "night": (str, type(None))}, ("origin",)),
                  "darks": MapOf(Record({"n_inputs": _INT}, ("n_inputs",))),
                  "bias": (Record({"n_inputs": _INT}, ("n_inputs",)), type(None)), "bad_pixels": _OPT_INT},
                 ("flat", "darks"))
FAILURE = Record({"stage": str, "status": str, "error": str, "retries_pending": _INT, "frames": ListOf(str),
                  "n_frames": _INT}, ("stage", "status", "error", "retries_pending", "frames", "n_frames"))
PROBLEM = Record({"path": str, "event": str, "reason": str}, ("path", "event", "reason"))
FRAMES = Record({"columns": ListOf(str), "rows": ListOf(ListOf(ANY))}, ("columns", "rows"))
LIGHT_CURVE = Record({"status": str, "n_good": _INT, "n_points": _INT, "rms": NUM, "median_err": NUM,
                      "aperture_fwhm": NUM, "n_comparisons": _INT,
                      "binned": Record({"rows": ListOf(ListOf(NUM)), "rms": OPT_NUM})})
SUMMARY = Record({"schema": int, "night": str, "state": str, "attention": bool, "counts": COUNTS, "medians": MEDIANS,
                  "masters": MASTERS, "failures": ListOf(FAILURE), "problems": ListOf(PROBLEM), "frames": FRAMES,
                  "photometry": MapOf(LIGHT_CURVE)},
                 ("schema", "night", "state", "attention", "counts", "medians", "masters", "failures", "problems",
                  "frames"))
_FRAME_CELLS = {name: (str, type(None)) for name in ("frame", "time", "calibrate", "astrometry")}


def summary_problem(document: Any) -> str | None:
    """What is wrong with a summary document (None when ``report`` can render it)."""
    try:
        check(document, SUMMARY, "summary")
        if document["masters"]["flat"]["origin"] not in ("own", "borrowed", "none"):
            return "summary.masters.flat.origin: expected own, borrowed or none"
        for record in document.get("photometry", {}).values():
            if record.get("status") == "ok":
                check(record, Record(LIGHT_CURVE.fields, ("n_good", "n_points", "rms", "median_err", "aperture_fwhm",
                                                         "n_comparisons")), "summary.photometry")
        columns = document["frames"]["columns"]
        for index, row in enumerate(document["frames"]["rows"]):
            for column, value in zip(columns, row):
                check(value, _FRAME_CELLS.get(column, OPT_NUM), f"summary.frames.rows[{index}].{column}")
    except ValueError as error:  # LedgerInvalid
        return str(error)
    return None
