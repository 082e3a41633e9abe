//! Helpers for the end-to-end tests of the whole system (they arrive with the services).
