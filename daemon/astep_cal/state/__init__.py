"""State: the JSON ledger (`ledger`), its typed records (`entries`) and its rebuilding from the outputs'
provenance (`recovery`)."""
