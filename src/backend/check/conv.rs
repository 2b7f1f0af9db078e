//! Shape checks for the conv ops (to be written).
