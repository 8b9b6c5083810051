//! Rendering a scene into an `RgbImage` with plain Rust: shaded backgrounds, filled
//! shapes with 4x4 supersampled edges. Deterministic: only integer and `f32`
//! arithmetic in a fixed order.

use glimpse_data::rng::SplitMix64;
use image::{Rgb, RgbImage};

use crate::vocab::{COLORS, SIZES};
use crate::world::{Object, Scene};

/// Supersampling per axis for edge coverage.
const SUB: u32 = 4;

/// Geometry of a placed object: centre and radius in pixels. `jitter` in [0, 1] scales
/// the object's drawn offset from its cell's centre (0: exactly at the centre).
pub(crate) fn placement(obj: &Object, size: u32, jitter: f32) -> (f32, f32, f32) {
    let cell = size as f32 / 3.0;
    let (row, col) = ((obj.cell / 3) as f32, (obj.cell % 3) as f32);
    let r = SIZES[obj.kind.size].1 * cell;
    let free = (cell / 2.0 - r - 1.0).max(0.0) * jitter;
    let cx = (col + 0.5) * cell + obj.jitter.0 * free;
    let cy = (row + 0.5) * cell + obj.jitter.1 * free;
    (cx, cy, r)
}

/// Whether the point `(u, v)` (relative to the centre, in radii; `v` grows downwards)
/// lies inside shape `shape`.
pub(crate) fn inside(shape: usize, u: f32, v: f32) -> bool {
    match shape {
        // circle
        0 => u * u + v * v <= 1.0,
        // square
        1 => u.abs() <= 0.82 && v.abs() <= 0.82,
        // triangle, apex up
        2 => (-1.0..=0.8).contains(&v) && u.abs() <= 0.98 * (v + 1.0) / 1.8,
        // star, five points, one up
        3 => inside_star(u, v),
        // cross
        4 => (u.abs() <= 0.3 && v.abs() <= 0.9) || (v.abs() <= 0.3 && u.abs() <= 0.9),
        // diamond
        5 => u.abs() / 0.8 + v.abs() <= 1.0,
        // heart
        _ => {
            let x = u * 1.15;
            let y = -v * 1.15 + 0.12;
            let a = x * x + y * y - 1.0;
            a * a * a - x * x * y * y * y <= 0.0
        }
    }
}

fn inside_star(u: f32, v: f32) -> bool {
    let rho = (u * u + v * v).sqrt();
    if rho > 1.0 {
        return false;
    }
    if rho < 0.4 {
        return true;
    }
    let sector = std::f32::consts::PI * 2.0 / 5.0;
    let half = sector / 2.0;
    // Angle from straight up, clockwise.
    let theta = u.atan2(-v);
    let t = theta.rem_euclid(sector);
    let phi = if t > half { sector - t } else { t };
    let (px, py) = (rho * phi.cos(), rho * phi.sin());
    // Outer vertex (1, 0), inner vertex at angle `half`, inner radius 0.42.
    let (qx, qy) = (0.42 * half.cos(), 0.42 * half.sin());
    let (dx, dy) = (qx - 1.0, qy);
    let cross_p = dx * py - dy * (px - 1.0);
    let cross_o = dx * 0.0 - dy * (0.0 - 1.0);
    cross_p * cross_o >= 0.0
}

/// A shade of `c`: darker by `1 - f`, or for near-black colours lighter, so that
/// textures stay visible on every background.
fn shade(c: [u8; 3], f: f32) -> [u8; 3] {
    if c.iter().all(|&x| x < 60) {
        c.map(|x| (x as f32 + (1.0 - f) * 160.0).round().clamp(0.0, 255.0) as u8)
    } else {
        c.map(|x| (x as f32 * f).round().clamp(0.0, 255.0) as u8)
    }
}

/// Paints the background: shades of one colour in the scene's style.
fn background(img: &mut RgbImage, scene: &Scene) {
    let base = COLORS[scene.bg_color].1;
    let size = img.width();
    let mut rng = SplitMix64::new(scene.bg_seed);
    let horizontal = rng.next_u64() & 1 == 1;
    let tile = (size / 8).max(2);
    for y in 0..img.height() {
        for x in 0..size {
            let f = match scene.bg_style {
                0 => 1.0,
                1 => {
                    let t = if horizontal { x } else { y } as f32 / (size - 1) as f32;
                    1.0 - 0.25 * t
                }
                2 => {
                    if ((x / tile) + (y / tile)).is_multiple_of(2) {
                        1.0
                    } else {
                        0.85
                    }
                }
                _ => 0.88 + 0.12 * rng.unit() as f32,
            };
            img.put_pixel(x, y, Rgb(shade(base, f)));
        }
    }
}

/// Renders `scene` at `size` x `size` pixels. Returns the image and, per object, its
/// bounding box `[x0, y0, x1, y1]` (pixels at least half covered; `x1`, `y1`
/// exclusive).
pub(crate) fn render(scene: &Scene, size: u32, jitter: f32) -> (RgbImage, Vec<[u32; 4]>) {
    let mut img = RgbImage::new(size, size);
    background(&mut img, scene);
    let mut boxes = Vec::with_capacity(scene.objects.len());
    let full = SUB * SUB;
    for obj in &scene.objects {
        let (cx, cy, r) = placement(obj, size, jitter);
        let color = COLORS[obj.kind.color].1;
        let x_lo = (cx - r - 1.0).floor().max(0.0) as u32;
        let y_lo = (cy - r - 1.0).floor().max(0.0) as u32;
        let x_hi = ((cx + r + 1.0).ceil() as u32).min(size);
        let y_hi = ((cy + r + 1.0).ceil() as u32).min(size);
        let mut bbox = [u32::MAX, u32::MAX, 0, 0];
        for y in y_lo..y_hi {
            for x in x_lo..x_hi {
                let mut hits = 0;
                for sy in 0..SUB {
                    for sx in 0..SUB {
                        let px = x as f32 + (sx as f32 + 0.5) / SUB as f32;
                        let py = y as f32 + (sy as f32 + 0.5) / SUB as f32;
                        if inside(obj.kind.shape, (px - cx) / r, (py - cy) / r) {
                            hits += 1;
                        }
                    }
                }
                if hits == 0 {
                    continue;
                }
                let p = img.get_pixel_mut(x, y);
                if hits == full {
                    p.0 = color;
                } else {
                    for (c, &k) in p.0.iter_mut().zip(&color) {
                        let v = (*c as u32 * (full - hits) + k as u32 * hits + full / 2) / full;
                        *c = v as u8;
                    }
                }
                if hits * 2 >= full {
                    bbox[0] = bbox[0].min(x);
                    bbox[1] = bbox[1].min(y);
                    bbox[2] = bbox[2].max(x + 1);
                    bbox[3] = bbox[3].max(y + 1);
                }
            }
        }
        if bbox[0] == u32::MAX {
            // Too small to cover half a pixel anywhere: the box of its centre pixel.
            let (x, y) = (cx as u32, cy as u32);
            bbox = [x, y, x + 1, y + 1];
        }
        boxes.push(bbox);
    }
    (img, boxes)
}
