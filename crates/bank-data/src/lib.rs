//! # bank-data
//!
//! Images in, K-view batches out, for instance-discrimination training with a memory bank.
//!
//! - [`ImageIndex`] finds the images of a folder tree or a `.tar`/`.tar.gz` archive once (links
//!   followed, hidden entries skipped, formats judged by content; class folders or unlabelled;
//!   stratified splits; test classes mapped by name). It is then either decoded into memory
//!   ([`ImageIndex::decode`]) or served batch by batch ([`ImageIndex::streaming`],
//!   [`StreamingDataset`]), memory bounded whatever the number of images.
//! - Readers decode a dataset once into one compact [`ImageStore`] (in parallel, within a memory
//!   limit): image folders ([`read_image_folder`]), archives ([`read_image_archive`]),
//!   CIFAR-10/100 binaries ([`read_cifar`]) and STL-10 binaries ([`read_stl10`]).
//!   [`DatasetCache`] keeps the decoded result on disk for the next start, keyed on every source
//!   file ([`files_fingerprint`], [`ImageIndex::fingerprint`]) and the decode settings.
//! - [`AugmentConfig`] is the NPID/ISIF augmentation; [`EvalConfig`] the evaluation view. Every
//!   view is a pure function of `(seed, epoch, index, view)` ([`view_seed`]).
//! - [`MultiViewLoader`] shuffles per epoch and renders `B·K` views per batch (1 or 3 channels)
//!   in `bank-core`'s [`bank_core::ViewLayout`], a batch ahead on a background thread; each
//!   sample's image is fetched once per batch and its K views rendered from it.
//!   [`channel_stats`] measures the normalisation of a dataset.
//! - [`Downloader`] fetches CIFAR-10/100 and STL-10 with SHA-256 checks and resume.
//!
//! Invariant: nothing here knows of models, losses or the bank beyond the batch layout.

mod archive;
mod augment;
mod cache;
mod cifar;
mod dataset;
mod decode;
mod download;
mod error;
mod folder;
mod index;
mod index_decode;
mod loader;
mod render;
mod scan_archive;
mod scan_folder;
mod shard;
mod sniff;
mod stats;
mod stl10;
mod store;
mod streaming;
mod tar_links;
mod tree;

pub use archive::read_image_archive;
pub use augment::{AugmentConfig, EvalConfig, Transform, view_seed};
pub use cache::{DatasetCache, files_fingerprint, load as load_cache, save as save_cache};
pub use cifar::{CIFAR10_CLASSES, Cifar100Label, CifarKind, cifar_split_files, read_cifar};
pub use dataset::{Dataset, ImageDataset, LoadedImage, OwnedImage, SkippedFile, first_per_class};
pub use decode::{
    DEFAULT_MEMORY_LIMIT, DecodeOptions, DecodedImage, FolderLayout, OnError, decode_image,
    is_image_name,
};
pub use download::{
    CIFAR10_BINARY, CIFAR100_BINARY, Downloader, RemoteFile, STL10_BINARY, part_path, sha256_of,
    unpack,
};
pub use error::{Error, Result};
pub use folder::read_image_folder;
pub use index::{ImageIndex, ScanOptions};
pub use loader::{Batch, EpochBatches, HostBatch, LoaderConfig, MultiViewLoader};
pub use render::{ANTIALIAS_ABOVE, CropRect, Jitter, Normalize, ViewParams, crop_resize, render};
pub use sniff::ImageKind;
pub use sniff::{IMAGE_EXTENSIONS, has_image_extension};
pub use stats::{MIN_STD, channel_stats};
pub use stl10::{STL10_CLASSES, read_stl10};
pub use store::{CHANNELS, ImageRef, ImageStore};
pub use streaming::StreamingDataset;
