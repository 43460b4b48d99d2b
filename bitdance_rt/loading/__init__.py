"""Reading released BitDance checkpoints: family detection, shape inference, mmap loading."""
