"""What the tests share: the engine harness, waits, ports, processes."""
