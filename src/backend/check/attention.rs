//! Shape checks for the attention ops (to be written).
