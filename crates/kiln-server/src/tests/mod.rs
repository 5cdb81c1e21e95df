//! Unit tests of the server's pure pieces: parameter validation, the error mapping and the
//! Prometheus text rendering.

mod units;
