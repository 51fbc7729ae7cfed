"""The night engine: what a night is and which steps it runs, for every front-end.

`pipeline` (open a night, the frames to do, close it), `stages` (the one stage runner: timing, events,
the failure record), `rules` (what a frame or night still needs), `night` (the raw night's inventory),
`night_masters` and `frame_steps` (masters and one frame's steps with their ledger records),
`photometry` (the night's light-curve step) and `astrometry` (solve-field as a process).
"""
