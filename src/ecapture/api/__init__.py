"""Runtime control: the controller that owns a capture's output, signals and
module, and the HTTP API (status, reload, event stream, live page) on top."""
