//! Shape checks for the activation ops (to be written).
