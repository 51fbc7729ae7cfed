"""Formats, each defined once: the data layout and file names (`names`), every header card (`keywords`),
the master, CAL and CAT files (`products`), FITS reads and atomic writes (`fitsio`), the nightly summary
and report (`summary`) and the light-curve products (`lightcurve_products`)."""
