"""Self-supervised methods: a network, a loss, optional target/state."""
