"""GLSL 4.30 compute shaders of the OpenGL backend, as Python strings.

Frames: every kernel works in the bound volume's **index space** (voxel centres at whole numbers)
and measures distance along a ray in mm from the X-ray source, so that a depth is the ray
parameter itself. A 3-D texture holds a block of voxels whose first texel sits at volume index
``tex_origin`` (texel ``t`` is voxel ``tex_origin + t``), with a margin of zero voxels, so that
interpolation outside the data falls to 0 as zero padding does. Textures are laid out like the
numpy array ``(I, J, K)`` in C order, so texture x is the index k: lookups swizzle ``.zyx``.

Sampling lattice (the one :mod:`regkit.render.torch_backend` documents, so that both backends
sample the same points): a view marches across the planes perpendicular to one index axis ``a``;
the voxel-edge extent ``[-1/2, n_a - 1/2]`` is cut into ``n_cells`` equal cells (both chosen on
the host, per view), ``m = n_cells / n_a`` per voxel, and cell ``p`` is sampled on its mid-plane
``x_a = (p + 1/2)/m - 1/2``. A ray clipped to the voxel-edge box (and to ``t >= 0``) covers cells
``first … last``; interior cells weigh 1, the two end cells the part of them inside the box (a
ray through both faces across ``a`` has whole cells only). In ray order the samples are
``t_k = t_base + k·h`` (``h`` the cell length along the ray, mm).

Empty-space skipping: a coarse occupancy grid marks each brick of ``BRICK`` cells per axis whose
trilinear field can be non-zero (cell ``c`` interpolates texels ``c`` and ``c + 1``); rays step
over empty bricks without sampling them. Samples outside a block's support box (a bone crop)
are skipped the same way. Every sample skipped is exactly 0, so skipping changes no result.
For a 0/1 mask the grid also marks bricks whose field is 1 everywhere (texel 2): the layer march
steps over them while inside, where every sample is inside too (on the hand phantom this cut the
per-bone march by about 30 %, with bit-identical depths).

llvmpipe (Mesa's CPU driver) runs 8 invocations in SIMD lanes and executes both sides of a branch
for all lanes unless none takes it; so rare, costly work (refining a crossing) is done after the
march, once per crossing, never inside the per-sample loop.

Kernels (``local_size`` 8×8, ``gl_GlobalInvocationID.z`` the view within a dispatch):

* ``drr``: ``Σ w_k μ(t_k) · h`` along each pixel's ray;
* ``depth``: crossings of the 0.5 level set of a trilinear 0/1 mask, marched layer by layer
  along each ray, each refined by bisection then Illinois steps on the exact (float) trilinear
  field;
* ``bone_index``: the dominant label just past the first entry into the union mask;
* ``resample``: trilinear warp of the volume onto a target grid under B affine maps.
"""

from __future__ import annotations

__all__ = ["bone_index_source", "depth_atlas_source", "depth_source", "drr_source",
           "resample_source"]

_HEADER = """#version 430
layout(local_size_x = 8, local_size_y = 8, local_size_z = 1) in;
"""

# Trilinear filtering of a 3-D texture at normalised coordinates c, with the clamp-to-edge wrap
# regkit's textures use: by the texture unit, or, with EXACT_FILTER, in float from the eight
# texels. Texture units of most GPUs weigh texels in fixed point (steps of 1/256 texel: an
# NVIDIA H200 was measured so), which moves a resampled value by up to 1/512 of the step between
# neighbouring voxels; the renderer asks for EXACT_FILTER where a probe finds that
# (:func:`regkit.render.gl.context.texture_filtering_is_exact`).
_FILTER = """
// Trilinear interpolation in float from the eight texels around p, in texel coordinates of the
// texture's own (x, y, z) = (k, j, i) order with texel centres at whole numbers; clamped to the
// edge texels.
float texel_trilinear(sampler3D s, vec3 p) {
    ivec3 top = textureSize(s, 0) - 1;
    vec3 pc = clamp(p, vec3(0.0), vec3(top));
    ivec3 lo = ivec3(floor(pc));
    ivec3 hi = min(lo + 1, top);
    vec3 f = pc - vec3(lo);
    float c000 = texelFetch(s, lo, 0).r;
    float c100 = texelFetch(s, ivec3(hi.x, lo.y, lo.z), 0).r;
    float c010 = texelFetch(s, ivec3(lo.x, hi.y, lo.z), 0).r;
    float c110 = texelFetch(s, ivec3(hi.x, hi.y, lo.z), 0).r;
    float c001 = texelFetch(s, ivec3(lo.x, lo.y, hi.z), 0).r;
    float c101 = texelFetch(s, ivec3(hi.x, lo.y, hi.z), 0).r;
    float c011 = texelFetch(s, ivec3(lo.x, hi.y, hi.z), 0).r;
    float c111 = texelFetch(s, hi, 0).r;
    float y0 = mix(mix(c000, c100, f.x), mix(c010, c110, f.x), f.y);
    float y1 = mix(mix(c001, c101, f.x), mix(c011, c111, f.x), f.y);
    return mix(y0, y1, f.z);
}

float filtered(sampler3D s, vec3 c) {
#ifdef EXACT_FILTER
    return texel_trilinear(s, c * vec3(textureSize(s, 0)) - 0.5);
#else
    return texture(s, c).r;
#endif
}
"""


def _filter_define(exact_filter: bool) -> str:
    return "#define EXACT_FILTER\n" if exact_filter else ""

# One view: the source and the world->index linear map folded with the camera rotation, so that a
# pixel's ray direction in index units per mm is (M c) / |c|, c = ((u - cx)/fx, (v - cy)/fy, 1).
_VIEWS = """
struct View {
    vec4 origin;     // xyz: the X-ray source in volume index space
    vec4 intrinsic;  // fx, fy, cx, cy in pixels
    vec4 m0;         // rows of M = index_from_world[:3, :3] @ world_from_camera[:3, :3]
    vec4 m1;
    vec4 m2;
    ivec4 plane;     // marching axis a, number of cells over the volume's extent along a
};
layout(std430, binding = 1) readonly buffer Views { View views[]; };
uniform int view_offset;      // first view of this dispatch in views[]
uniform ivec4 roi;            // u0, v0, width, height of the pixel block traced (grid mode)
uniform int n_pixels;         // pixel-list mode: pixels per view
uniform int pixel_view_stride;  // pixel-list mode: 0 when all views share one list, else n_pixels
#ifdef PIXEL_LIST
layout(std430, binding = 2) readonly buffer Pixels { vec2 pixel_uv[]; };
#endif

// The ray of this invocation; false when the invocation has no pixel. `slot` indexes the output.
bool pixel_ray(out vec3 origin, out vec3 dir, out ivec2 plane, out int slot) {
    uvec3 gid = gl_GlobalInvocationID;
    int view = view_offset + int(gid.z);
    vec2 uv;
#ifdef PIXEL_LIST
    int p = int(gid.y) * int(gl_NumWorkGroups.x * gl_WorkGroupSize.x) + int(gid.x);
    if (p >= n_pixels) return false;
    uv = pixel_uv[view * pixel_view_stride + p];
    slot = int(gid.z) * n_pixels + p;
#else
    if (int(gid.x) >= roi.z || int(gid.y) >= roi.w) return false;
    uv = vec2(roi.x + int(gid.x), roi.y + int(gid.y)) + 0.5;
    slot = (int(gid.z) * roi.w + int(gid.y)) * roi.z + int(gid.x);
#endif
    View v = views[view];
    vec3 c = vec3((uv.x - v.intrinsic.z) / v.intrinsic.x, (uv.y - v.intrinsic.w) / v.intrinsic.y,
                  1.0);
    c /= length(c);
    origin = v.origin.xyz;
    dir = vec3(dot(v.m0.xyz, c), dot(v.m1.xyz, c), dot(v.m2.xyz, c));
    plane = v.plane.xy;
    return true;
}

// Clip a ray to the box [lo, hi] (index space) and to t >= 0; false when nothing is left.
bool clip_box(vec3 origin, vec3 dir, vec3 lo, vec3 hi, out float t0, out float t1) {
    t0 = 0.0;
    t1 = 3.0e38;
    for (int a = 0; a < 3; ++a) {
        if (abs(dir[a]) < 1.0e-12) {
            if (origin[a] < lo[a] || origin[a] > hi[a]) return false;
        } else {
            float ta = (lo[a] - origin[a]) / dir[a];
            float tb = (hi[a] - origin[a]) / dir[a];
            t0 = max(t0, min(ta, tb));
            t1 = min(t1, max(ta, tb));
        }
    }
    return t1 > t0;
}

vec3 safe_inverse(vec3 d) {
    return vec3(abs(d.x) < 1.0e-12 ? 0.0 : 1.0 / d.x, abs(d.y) < 1.0e-12 ? 0.0 : 1.0 / d.y,
                abs(d.z) < 1.0e-12 ? 0.0 : 1.0 / d.z);
}
"""

# The march of one ray on the plane lattice, restricted to the block's support box.
_MARCH = """
layout(binding = 1) uniform usampler3D bricks;
uniform ivec3 n_bricks;       // (i, j, k) brick counts
uniform vec3 tex_scale;       // 1 / texture size, (i, j, k) order
uniform ivec3 vol_shape;      // (I, J, K) of the volume
#ifdef BLOCK_PER_RAY
// an atlas of blocks: each invocation sets its own block's placement before marching
vec3 tex_origin;
vec3 support_lo;
vec3 support_hi;
#else
uniform vec3 tex_origin;      // volume index of texel (0, 0, 0)
uniform vec3 support_lo;      // where the block's values can be non-zero (index space)
uniform vec3 support_hi;
#endif
uniform float value_scale;    // a sampled texel t means value_scale · t (unorm16 textures)

struct March {
    vec3 q0;          // the source in texel space
    vec3 dir;         // index units per mm
    vec3 inv_dir;
    float t_near;     // the ray inside the voxel-edge box
    float t_far;
    float t_base;     // distance of sample 0 (the cell where the ray enters the box)
    float h;          // cell length along the ray, mm
    int n;            // cells first ... last
    float w_enter;    // weight of sample 0
    float w_leave;    // weight of sample n - 1 (when n > 1)
    int k_lo;         // samples k_lo ... k_hi can lie in the support box; the rest are 0
    int k_hi;
};

bool start_march(vec3 origin, vec3 dir, ivec2 plane, out March m) {
    m.q0 = origin - tex_origin;
    m.dir = dir;
    m.inv_dir = safe_inverse(dir);
    // The voxel-edge box, with the face each end of the ray crosses (a direction component under
    // 1e-12 counts as 1e-12, as in the PyTorch backend).
    vec3 n_vox = vec3(vol_shape);
    float t_near_raw = -3.0e38;
    m.t_far = 3.0e38;
    int enter_axis = 0;
    int exit_axis = 0;
    for (int i = 0; i < 3; ++i) {
        float di = abs(dir[i]) < 1.0e-12 ? 1.0e-12 : dir[i];
        float ta = (-0.5 - origin[i]) / di;
        float tb = (n_vox[i] - 0.5 - origin[i]) / di;
        if (min(ta, tb) > t_near_raw) {
            t_near_raw = min(ta, tb);
            enter_axis = i;
        }
        if (max(ta, tb) < m.t_far) {
            m.t_far = max(ta, tb);
            exit_axis = i;
        }
    }
    m.t_near = max(t_near_raw, 0.0);
    if (!(m.t_far > m.t_near)) return false;
    int a = plane.x;
    int n_cells = plane.y;
    float cells = float(n_cells) / n_vox[a];  // cells per voxel, not necessarily whole
    float da = abs(dir[a]) < 1.0e-12 ? 1.0e-12 : dir[a];
    float q_near = (origin[a] + m.t_near * da + 0.5) * cells;
    float q_far = (origin[a] + m.t_far * da + 0.5) * cells;
    float q_lo = clamp(min(q_near, q_far), 0.0, float(n_cells));
    float q_hi = max(clamp(max(q_near, q_far), 0.0, float(n_cells)), q_lo);
    if (enter_axis == a && exit_axis == a && t_near_raw > 0.0) {
        q_lo = 0.0;  // through both faces across a: every cell whole (no rounding at the faces)
        q_hi = float(n_cells);
    }
    int first = clamp(int(floor(q_lo)), 0, n_cells - 1);
    int last = clamp(int(floor(q_hi)), 0, n_cells - 1);
    float w_first = min(float(first) + 1.0, q_hi) - q_lo;
    float w_last = last > first ? q_hi - float(last) : 0.0;
    m.h = 1.0 / (cells * abs(da));
    m.n = last - first + 1;
    int p0 = da > 0.0 ? first : last;
    m.t_base = ((float(p0) + 0.5) / cells - 0.5 - origin[a]) / da;
    m.w_enter = m.n == 1 ? w_first : (da > 0.0 ? w_first : w_last);
    m.w_leave = da > 0.0 ? w_last : w_first;
    float s0, s1;
    if (!clip_box(origin, dir, support_lo, support_hi, s0, s1)) {
        m.k_lo = 0;
        m.k_hi = -1;
    } else {
        m.k_lo = max(0, int(floor((s0 - m.t_base) / m.h)) - 1);
        m.k_hi = min(m.n - 1, int(ceil((s1 - m.t_base) / m.h)) + 1);
    }
    return true;
}

float sample_t(March m, int k) {
    return m.t_base + float(k) * m.h;
}

// One past the last sample in the brick that holds sample k (at most k_end_max), and whether that
// brick is occupied (its field can be non-zero) and full (a mask brick whose field is 1
// everywhere: occupancy texel 2).
int brick_end_full(March m, int k, int k_end_max, out bool occupied, out bool full) {
    vec3 q = m.q0 + sample_t(m, k) * m.dir;
    ivec3 b = clamp(ivec3(floor(q / float(BRICK))), ivec3(0), n_bricks - 1);
    uint state = texelFetch(bricks, b.zyx, 0).r;
    occupied = state != 0u;
    full = state == 2u;
    vec3 wall = (vec3(b) + step(0.0, m.dir)) * float(BRICK);
    vec3 tw = (wall - m.q0) * m.inv_dir;
    float t_exit = 3.0e38;
    for (int a = 0; a < 3; ++a) {
        if (abs(m.dir[a]) >= 1.0e-12) t_exit = min(t_exit, tw[a]);
    }
    int k_end = int(ceil((t_exit - m.t_base) / m.h));
    return clamp(k_end, k + 1, k_end_max);
}

int brick_end(March m, int k, int k_end_max, out bool occupied) {
    bool full;
    return brick_end_full(m, k, k_end_max, occupied, full);
}
"""


def drr_source(*, pixel_list: bool, brick: int, exact_filter: bool = False) -> str:
    """The DRR kernel: ``Σ_k w_k μ(t_k) · h``, μ trilinear (``filtered``).

    ``brick = 0`` marches every sample in one loop (best where little space is empty: llvmpipe
    pays for lanes that leave a brick at different samples); otherwise empty bricks are skipped.
    ``exact_filter``: interpolate in float from the texels rather than by the texture unit.
    """
    defines = (f"#define BRICK {max(int(brick), 1)}\n" + ("#define SKIP_EMPTY\n" if brick else "")
               + ("#define PIXEL_LIST\n" if pixel_list else "") + _filter_define(exact_filter))
    return _HEADER + defines + _FILTER + _VIEWS + _MARCH + """
layout(binding = 0) uniform sampler3D volume;
layout(std430, binding = 0) writeonly buffer Result { float result[]; };

float mu_at(vec3 q) {
    return filtered(volume, (q.zyx + 0.5) * tex_scale.zyx);
}

void main() {
    vec3 origin, dir;
    ivec2 plane;
    int slot;
    if (!pixel_ray(origin, dir, plane, slot)) return;
    float total = 0.0;
    March m;
    if (start_march(origin, dir, plane, m)) {
        int k = m.k_lo;
        while (k <= m.k_hi) {
            int k_end = m.k_hi + 1;
            bool occupied = true;
#ifdef SKIP_EMPTY
            k_end = brick_end(m, k, m.k_hi + 1, occupied);
#endif
            if (occupied) {
                // Normalised texture coordinates of sample k, k0 + dt·k: computed afresh for every
                // sample (no drift), and cheaper than going through index space.
                vec3 k0 = ((m.q0 + m.t_base * m.dir).zyx + 0.5) * tex_scale.zyx;
                vec3 dt = (m.dir * m.h).zyx * tex_scale.zyx;
                float acc = 0.0;
                for (; k + 4 <= k_end; k += 4) {
                    vec3 c = k0 + float(k) * dt;
                    acc += filtered(volume, c) + filtered(volume, c + dt)
                        + filtered(volume, c + 2.0 * dt) + filtered(volume, c + 3.0 * dt);
                }
                for (; k < k_end; ++k) {
                    acc += filtered(volume, k0 + float(k) * dt);
                }
                total += acc;
            }
            k = k_end;
        }
        // The end cells weigh only their part inside the box (a skipped sample is 0 anyway).
        total += (m.w_enter - 1.0) * mu_at(m.q0 + m.t_base * m.dir);
        if (m.n > 1) {
            total += (m.w_leave - 1.0) * mu_at(m.q0 + sample_t(m, m.n - 1) * m.dir);
        }
        total *= m.h * value_scale;
    }
    result[slot] = total;
}
"""


# A 0/1 mask texture (R16F holds 0 and 1 exactly): sampled by the texture unit while marching;
# interpolated exactly, in float from its eight texels, to refine crossings. q in texel space.
_MASK = """
layout(binding = 0) uniform sampler3D mask;

float mask_filtered(vec3 q) {
    return filtered(mask, (q.zyx + 0.5) * tex_scale.zyx);
}

float mask_exact(vec3 q) {
    return texel_trilinear(mask, q.zyx);
}

// Whether sample k is inside: in the voxel-edge box and the mask at least 0.5.
bool inside_at(March m, int k) {
    float t = sample_t(m, k);
    return t >= m.t_near && t <= m.t_far && mask_filtered(m.q0 + t * m.dir) >= 0.5;
}

float exact_level(March m, float t) {
    return mask_exact(m.q0 + t * m.dir) - 0.5;
}

// Where the ray crosses the surface between samples k - 1 and k; `entry`: it goes in there.
// Outside the voxel-edge box counts as outside: a crossing at a box face is the face itself.
// The 0.5 crossing of the exact field is bracketed by BISECTIONS halvings (the field can be flat
// near 0.5 and kinked at cell walls, where regula falsi alone crawls), then polished by
// REFINE_STEPS Illinois (modified regula falsi) steps. When the exact field does not change sign
// on the bracket (a texture unit with coarse interpolation weights put a sample near 0.5 on the
// wrong side), the line through the two exact values is used.
float refine_crossing(March m, int k, bool entry) {
    float ta = sample_t(m, k - 1);
    float tb = sample_t(m, k);
    if (entry && ta < m.t_near) {
        ta = m.t_near;
        if (exact_level(m, ta) >= 0.0) return ta;
    }
    if (!entry && tb > m.t_far) {
        tb = m.t_far;
        if (exact_level(m, tb) >= 0.0) return tb;
    }
    float ea = exact_level(m, ta);
    float eb = exact_level(m, tb);
    if ((ea < 0.0) == (eb < 0.0)) {
        return ta + (tb - ta) * clamp(ea / (ea - eb), 0.0, 1.0);
    }
    for (int it = 0; it < BISECTIONS; ++it) {
        float tm = 0.5 * (ta + tb);
        float em = exact_level(m, tm);
        if ((em < 0.0) == (eb < 0.0)) {
            tb = tm;
            eb = em;
        } else {
            ta = tm;
            ea = em;
        }
    }
    int side = 0;
    float t = ta;
    for (int it = 0; it < REFINE_STEPS; ++it) {
        t = (ta * eb - tb * ea) / (eb - ea);
        float et = exact_level(m, t);
        if ((et < 0.0) == (eb < 0.0)) {
            tb = t;
            eb = et;
            if (side == -1) ea *= 0.5;
            side = -1;
        } else {
            ta = t;
            ea = et;
            if (side == 1) eb *= 0.5;
            side = 1;
        }
    }
    return t;
}
"""


_PEEL = """
layout(std430, binding = 0) buffer Front { float front[]; };
layout(std430, binding = 3) buffer Back { float back[]; };
layout(std430, binding = 4) writeonly buffer Count { uint entries[]; };
uniform int n_layers;

// The layered march of one ray: layer l's front and back go to front/back[first + l * stride] (NaN
// where there is no such layer); the number of entries (capped at 255) to entries[slot].
void peel(vec3 origin, vec3 dir, ivec2 plane, int first, int stride, int slot) {
    int n_in = 0;
    int n_out = 0;
    March m;
    if (start_march(origin, dir, plane, m)) {
        bool inside = false;
        int k = m.k_lo;
        while (k <= m.k_hi) {
            bool occupied, full;
            int k_end = brick_end_full(m, k, m.k_hi + 1, occupied, full);
            if (!occupied && !inside) {
                k = k_end;  // an empty brick: every sample in it is outside
            }
            if (full && inside) {
                k = k_end;  // a full brick: every sample in it is inside (within the volume)
            }
            for (; k < k_end; ++k) {
                bool now = inside_at(m, k);
                if (now != inside) {
                    if (now) {
                        if (n_in < n_layers) front[first + n_in * stride] = float(k);
                        n_in += 1;
                    } else {
                        if (n_out < n_layers) back[first + n_out * stride] = float(k);
                        n_out += 1;
                    }
                    inside = now;
                }
            }
        }
        if (inside) {  // out again after the last sample: at the box face at the latest
            if (n_out < n_layers) back[first + n_out * stride] = float(m.k_hi + 1);
            n_out += 1;
        }
        for (int l = 0; l < min(max(n_in, n_out), n_layers); ++l) {
            if (l < n_in) {
                int at = first + l * stride;
                front[at] = refine_crossing(m, int(front[at]), true);
            }
            if (l < n_out) {
                int at = first + l * stride;
                back[at] = refine_crossing(m, int(back[at]), false);
            }
        }
    }
    for (int l = min(n_in, n_layers); l < n_layers; ++l) {
        front[first + l * stride] = uintBitsToFloat(0x7fc00000u);
    }
    for (int l = min(n_out, n_layers); l < n_layers; ++l) {
        back[first + l * stride] = uintBitsToFloat(0x7fc00000u);
    }
    entries[slot] = uint(min(n_in, 255));
}
"""


def depth_source(*, brick: int, bisections: int = 12, refine_steps: int = 6,
                 exact_filter: bool = False) -> str:
    """The layered ray-march kernel on a union mask.

    The march notes, for each of the first ``n_layers`` entries and exits, the sample just past
    the crossing (in the output slot); a second loop refines those and writes the depths.
    Outputs per ray: ``front[l]``, ``back[l]`` (NaN where layer ``l`` has no crossing) and the
    number of entries (capped at 255).
    """
    defines = (f"#define BRICK {int(brick)}\n#define BISECTIONS {int(bisections)}\n"
               f"#define REFINE_STEPS {int(refine_steps)}\n" + _filter_define(exact_filter))
    return _HEADER + defines + _FILTER + _VIEWS + _MARCH + _MASK + _PEEL + """
uniform int n_slots;          // rays per view in this dispatch

void main() {
    vec3 origin, dir;
    ivec2 plane;
    int slot;
    if (!pixel_ray(origin, dir, plane, slot)) return;
    // slot = view * rays + ray: layer l of that ray lives at (view * L + l) * rays + ray.
    int rays = n_slots;
    peel(origin, dir, plane, (slot / rays) * n_layers * rays + slot % rays, rays, slot);
}
"""


def depth_atlas_source(*, brick: int, bisections: int = 12, refine_steps: int = 6,
                       exact_filter: bool = False) -> str:
    """Per-bone layered ray marches of many bones in one dispatch, from an atlas of bone masks.

    The atlas texture holds each bone's own 0/1 mask crop (with zero margins, apart from the
    others), ``boxes[b]`` says where: its ``tex_origin`` and support box. The work is a list of
    windows ``(u0, v0, w, h)`` of (view, bone) pairs, the rays of window ``n`` being
    ``first[n] ... first[n] + w·h - 1`` (row-major in the window); each invocation finds its
    window by bisection on ``first``, then marches its pixel's ray through its bone's crop
    exactly as :func:`depth_source` does. Outputs: ray ``r``'s layer ``l`` at
    ``front/back[l · n_rays + r]``, its entries at ``entries[r]``.
    """
    defines = (f"#define BRICK {int(brick)}\n#define BISECTIONS {int(bisections)}\n"
               f"#define REFINE_STEPS {int(refine_steps)}\n#define BLOCK_PER_RAY 1\n"
               + _filter_define(exact_filter))
    return _HEADER + defines + _FILTER + _VIEWS + _MARCH + _MASK + _PEEL + """
struct Window {
    ivec4 box;     // u0, v0, width, height (pixels)
    ivec4 ids;     // view, bone (its boxes[] entry), first ray, unused
};
struct BoneBox {
    vec4 origin;   // xyz: volume index of the atlas's texel (0, 0, 0) for this bone
    vec4 lo;       // xyz: the bone's support box (index space)
    vec4 hi;
};
layout(std430, binding = 2) readonly buffer Windows { Window windows[]; };
layout(std430, binding = 5) readonly buffer Boxes { BoneBox boxes[]; };
uniform int n_windows;
uniform int n_rays;           // rays in this dispatch

void main() {
    uvec3 gid = gl_GlobalInvocationID;
    int r = int(gid.y) * int(gl_NumWorkGroups.x * gl_WorkGroupSize.x) + int(gid.x);
    if (r >= n_rays) return;
    int lo = 0;
    int hi = n_windows - 1;
    while (lo < hi) {  // the last window whose first ray is at or before this one
        int mid = (lo + hi + 1) >> 1;
        if (windows[mid].ids.z <= r) lo = mid; else hi = mid - 1;
    }
    Window w = windows[lo];
    int local = r - w.ids.z;
    vec2 uv = vec2(w.box.x + local % w.box.z, w.box.y + local / w.box.z) + 0.5;
    View v = views[w.ids.x];
    vec3 c = vec3((uv.x - v.intrinsic.z) / v.intrinsic.x, (uv.y - v.intrinsic.w) / v.intrinsic.y,
                  1.0);
    c /= length(c);
    vec3 dir = vec3(dot(v.m0.xyz, c), dot(v.m1.xyz, c), dot(v.m2.xyz, c));
    BoneBox b = boxes[w.ids.y];
    tex_origin = b.origin.xyz;
    support_lo = b.lo.xyz;
    support_hi = b.hi.xyz;
    peel(v.origin.xyz, dir, v.plane.xy, r, n_rays, r);
}
"""


def bone_index_source(*, brick: int, bisections: int = 12, refine_steps: int = 6,
                      exact_filter: bool = False) -> str:
    """The first-bone kernel: the label where each ray first enters the union mask.

    The first entry into the union mask, refined; there (1e-4 mm past it) the chosen label with the
    largest trilinear weight (ties to the smallest label).
    """
    defines = (f"#define BRICK {int(brick)}\n#define BISECTIONS {int(bisections)}\n"
               f"#define REFINE_STEPS {int(refine_steps)}\n" + _filter_define(exact_filter))
    return _HEADER + defines + _FILTER + _VIEWS + _MARCH + _MASK + """
layout(binding = 2) uniform usampler3D labels;  // the crop's labels, 0 outside the chosen bones
uniform ivec3 tex_size;       // (i, j, k)
layout(std430, binding = 0) writeonly buffer Result { int result[]; };

uint dominant_label(vec3 q) {
    vec3 qc = clamp(q, vec3(0.0), vec3(tex_size - 1));
    ivec3 c = min(ivec3(floor(qc)), tex_size - 2);
    vec3 f = qc - vec3(c);
    uint lab[8];
    float w[8];
    for (int n = 0; n < 8; ++n) {
        ivec3 o = ivec3((n >> 2) & 1, (n >> 1) & 1, n & 1);  // (i, j, k) offsets
        lab[n] = texelFetch(labels, (c + o).zyx, 0).r;
        vec3 wv = mix(vec3(1.0) - f, f, vec3(o));
        w[n] = wv.x * wv.y * wv.z;
    }
    uint best = 0u;
    float weight = -1.0;
    for (int n = 0; n < 8; ++n) {
        float s = 0.0;
        for (int j = 0; j < 8; ++j) {
            s += lab[j] == lab[n] ? w[j] : 0.0;
        }
        bool better = s > weight || (s == weight && lab[n] < best);
        if (lab[n] != 0u && better) {
            weight = s;
            best = lab[n];
        }
    }
    return best;
}

// The first sample index in k_lo ... k_hi inside the union, or -1.
int first_inside(March m) {
    int k = m.k_lo;
    while (k <= m.k_hi) {
        bool occupied;
        int k_end = brick_end(m, k, m.k_hi + 1, occupied);
        if (!occupied) k = k_end;
        for (; k < k_end; ++k) {
            if (inside_at(m, k)) return k;
        }
    }
    return -1;
}

void main() {
    vec3 origin, dir;
    ivec2 plane;
    int slot;
    if (!pixel_ray(origin, dir, plane, slot)) return;
    uint found = 0u;
    March m;
    if (start_march(origin, dir, plane, m)) {
        int k = first_inside(m);
        if (k >= 0) {
            float t = refine_crossing(m, k, true) + 1.0e-4;
            found = dominant_label(m.q0 + t * m.dir);
        }
    }
    result[slot] = int(found);
}
"""


def resample_source(*, exact_filter: bool = False) -> str:
    """The resampling kernel: values and inside mask of a fixed grid, 4 voxels per invocation.

    Invocation ``(x, y, z)`` fills voxels ``k = 4x … 4x + 3`` of row ``j = y`` of slab
    ``g = slab_offset + z`` (transform ``g div I``, ``i = g mod I``): values, and the inside mask
    packed as 4 bytes in one uint. Rows are padded to ``row_len`` (K rounded up to a multiple of
    4); outputs are laid out ``[z, j, k]`` from the dispatch's first slab.
    """
    return """#version 430
layout(local_size_x = 8, local_size_y = 8, local_size_z = 1) in;
""" + _filter_define(exact_filter) + _FILTER + """
layout(binding = 0) uniform sampler3D volume;
layout(std430, binding = 0) writeonly buffer Values { float values[]; };
layout(std430, binding = 3) writeonly buffer Inside { uint inside[]; };
layout(std430, binding = 1) readonly buffer Maps { vec4 maps[]; };  // 3 rows per transform
uniform ivec3 grid;           // (I, J, K) of the target grid
uniform int row_len;          // K rounded up to a multiple of 4
uniform int slab_offset;      // first slab (transform · I + i) of this dispatch
uniform vec3 upper;           // the moving volume's voxel-centre box is [0, upper]
uniform float tolerance;      // slack of that box, voxels
uniform float fill;
uniform vec3 tex_origin;
uniform vec3 tex_scale;

void main() {
    int k0 = int(gl_GlobalInvocationID.x) * 4;
    int j = int(gl_GlobalInvocationID.y);
    if (k0 >= grid.z || j >= grid.y) return;
    int z = int(gl_GlobalInvocationID.z);
    int b = (slab_offset + z) / grid.x;
    int i = slab_offset + z - b * grid.x;
    int map = 3 * b;
    vec4 p = vec4(float(i), float(j), float(k0), 1.0);
    vec3 m = vec3(dot(maps[map], p), dot(maps[map + 1], p), dot(maps[map + 2], p));
    vec3 dk = vec3(maps[map].z, maps[map + 1].z, maps[map + 2].z);
    int at = (z * grid.y + j) * row_len + k0;
    uint bits = 0u;
    for (int e = 0; e < 4; ++e) {
        vec3 x = m + float(e) * dk;
        bool ok = k0 + e < grid.z && all(greaterThanEqual(x, vec3(-tolerance)))
            && all(lessThanEqual(x, upper + tolerance));
        float v = fill;
        if (ok) {
            vec3 q = clamp(x, vec3(0.0), upper) - tex_origin;
            v = filtered(volume, (q.zyx + 0.5) * tex_scale.zyx);
            bits |= 1u << (8 * e);
        }
        values[at + e] = v;
    }
    inside[at >> 2] = bits;
}
"""
