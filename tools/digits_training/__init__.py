"""The pieces of ``tools/train_digits.py``: data, the binary tokenizer, the AR generator, the digit classifier."""
