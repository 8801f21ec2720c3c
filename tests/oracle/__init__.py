"""The real mmagic 1.2.0 code, loaded on CPU as the parity oracle for the tests (see ``mmagic_oracle``)."""
