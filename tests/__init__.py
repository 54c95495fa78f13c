import os

# The Triton interpreter is chosen when triton is first imported; every test runs on the CPU.
os.environ.setdefault("TRITON_INTERPRET", "1")
