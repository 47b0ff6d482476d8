//! `train.devices` names as backend devices.

use burn::prelude::*;
use burn::tensor::backend::DeviceId;

use crate::{Error, Result};

/// The devices named in `train.devices`, or `[default]` when the list is empty.
///
/// A name is `cpu` (the backend's default device; repeat it for several CPU replicas) or
/// `KIND:INDEX` with KIND one of `cpu`, `cuda`, `gpu`, `wgpu` and INDEX the device number
/// (`cuda:1`: the second GPU of the cuda, tch or wgpu backend; refused on flex and ndarray).
///
/// # Errors
/// [`Error::Config`] naming `train.devices` and the entry that is not such a name.
pub fn parse_devices<B: Backend>(names: &[String], default: &B::Device) -> Result<Vec<B::Device>> {
    if names.is_empty() {
        return Ok(vec![default.clone()]);
    }
    names.iter().map(|n| parse_one::<B>(n, default)).collect()
}

fn parse_one<B: Backend>(name: &str, default: &B::Device) -> Result<B::Device> {
    let bad = |reason: &str| Error::Config {
        field: "train.devices".into(),
        reason: format!("{name:?}: {reason}"),
    };
    let (kind, index) = match name.split_once(':') {
        Some((kind, index)) => {
            let index: u16 = index
                .parse()
                .map_err(|_| bad("the part after ':' must be a device number"))?;
            (kind, Some(index))
        }
        None => (name, None),
    };
    match (kind, index) {
        ("cpu", _) => Ok(default.clone()),
        ("cuda" | "gpu" | "wgpu", _) if cpu_only::<B>(default) => Err(bad(&format!(
            "the {} backend has no GPU (build with --backend cuda, wgpu or tch)",
            B::name(default)
        ))),
        ("cuda" | "gpu" | "wgpu", Some(i)) => Ok(B::Device::from_id(DeviceId::new(0, i))),
        ("cuda" | "gpu" | "wgpu", None) => Err(bad("give the device number, e.g. cuda:0")),
        _ => Err(bad("expected cpu, cpu:N, cuda:N, gpu:N or wgpu:N")),
    }
}

/// Whether the backend runs on the CPU only (flex, ndarray), where a GPU name would silently
/// mean the CPU.
fn cpu_only<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name.contains("flex") || name.contains("ndarray")
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cpu_names_give_the_default_device_and_bad_names_are_named() {
        let device = Default::default();
        assert_eq!(parse_devices::<B>(&[], &device).unwrap().len(), 1);
        assert_eq!(
            parse_devices::<B>(&names(&["cpu", "cpu:1"]), &device)
                .unwrap()
                .len(),
            2
        );
        for bad in ["tpu:0", "cuda", "cuda:x", "cpu:-1", "cuda:0", "wgpu:1"] {
            let err = parse_devices::<B>(&names(&["cpu", bad]), &device)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("train.devices") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }
}
