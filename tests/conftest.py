"""pytest's own ``pytester`` fixture, for the test that runs the crosscheck plugin."""
pytest_plugins = ["pytester"]
