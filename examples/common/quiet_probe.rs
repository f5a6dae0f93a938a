//! Keeps a Vulkan layer's notice off the examples' stderr.
//!
//! Mesa's Vulkan drivers install an implicit layer, `VK_LAYER_MESA_device_select`, that asks the display
//! server which GPU drives the display each time the adapters are listed, and lists that one first. Without
//! a Wayland session (`XDG_RUNTIME_DIR` unset, as under `sudo`, in containers and over plain ssh) its Wayland
//! query prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` on stderr, twice per GPU
//! probe, even when the example then solves on the CPU. With neither a Wayland nor an X display to ask, the
//! layer only moves the boot VGA device to the front, and wgpu ranks the adapters by type and power
//! preference itself; the examples then turn the layer off (`NODEVICE_SELECT=1`), unless the user set one of
//! the layer's variables.

/// Sets `NODEVICE_SELECT=1` when no display session can be reached and none of the layer's own variables
/// is set. Call it first in `main`, before any thread starts (changing the environment is only sound then).
pub fn quiet_device_select_layer() {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|d| !d.is_empty() && std::path::Path::new(&d).is_dir());
    let display = runtime_dir || set("WAYLAND_DISPLAY") || set("WAYLAND_SOCKET") || set("DISPLAY");
    let configured = ["NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !display && !configured {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
