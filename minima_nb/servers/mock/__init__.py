"""The embedded OpenAI-compatible mock server: :mod:`.server` serves, :mod:`.replies` says what."""
