"""astep-cal: unattended calibration and plate-solving for the ASTEP telescope."""

__version__ = "0.1.0"
