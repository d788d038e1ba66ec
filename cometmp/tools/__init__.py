"""cometmp's tools, apart from the engine: the command line, verify/recover, status, the
benchmarks and the demo. They use the engine's public modules; the engine never imports them."""
