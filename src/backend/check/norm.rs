//! Shape checks for the norm ops (to be written).
