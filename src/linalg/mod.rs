//! Dense linear algebra in f64 for the LoRA tools (`resize`, `extract`, `merge --new-rank`):
//! row-major matrices ([`Mat`]), the thin QR ([`qr`]), the SVD of a small matrix by one-sided
//! Jacobi ([`jacobi`]), and the two truncated SVDs built on them ([`svd`]): exact for a
//! low-rank product up·down, randomized for a full difference of two checkpoints.

pub mod jacobi;
pub mod mat;
pub mod qr;
pub mod svd;

pub use mat::Mat;
pub use svd::{svd, svd_of_product, truncated_svd, Randomized, Svd};
