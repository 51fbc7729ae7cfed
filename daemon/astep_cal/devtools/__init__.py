"""Development tools: synthetic nights with known truth, evaluation against that truth, the benchmarks,
the demo and the soak run. The service never imports this package; only the `demo` command and the tests
and benchmarks do."""
