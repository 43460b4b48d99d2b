"""Reference generation loops of the two families: token histories in, binary tokens out."""
