//! Captions for pictures: the WD14 tagger (wd14.rs, with the ViT of src/model/vit.rs on the
//! chosen backend) and Pillow's image steps it needs (pil.rs).

pub mod error;
pub mod pil;
pub mod wd14;

pub use error::CaptionError;
pub use wd14::{Tagger, Thresholds};
