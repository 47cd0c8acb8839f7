// Shared helpers, prepended to every shader. No bindings here.

// Flat invocation index for 1-D work launched by `grid_1d` (the grid spills into y when it
// needs more than 65535 workgroups).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg;
}
