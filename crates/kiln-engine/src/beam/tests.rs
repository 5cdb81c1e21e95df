//! Unit tests of the pure beam logic and of the search on a tiny hand-made model.
