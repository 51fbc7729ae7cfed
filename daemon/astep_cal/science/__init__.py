"""Science: functions on arrays, with no file, ledger or process access.

Where is the flat made? `masters.py`. One frame's calibration: `calibrate.py`; cosmic rays: `cosmics.py`
and `cosmic_checks.py`; quality metrics and the star list: `quality.py`; positions: `centroids.py`;
catalogues and matching: `catalogue.py`, `crossmatch.py`; light curves: `lightcurve.py`,
`lightcurve_time.py`. Steps return new values; they do not change what they were given.
"""
