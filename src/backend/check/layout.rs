//! Shape checks for the layout ops (to be written).
