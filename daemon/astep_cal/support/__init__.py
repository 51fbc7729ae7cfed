"""Support used by every layer: typed settings (`config`), atomic writes and storage errors (`storage`),
structured logs (`logs`) and the crash tests' kill points (`faults`)."""
