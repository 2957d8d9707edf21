"""CLEVR scene script, run inside Blender: builds and renders procedural CLEVR scenes.

Runs in Blender's own Python with the standard library and `bpy` only (Debian's Blender has no
numpy). Invoked by `lcsbench.data.render` as

    blender -b --factory-startup --python-exit-code 1 -P clevr_scene.py -- --jobs JOBS.json --threads 1

on Blender 3.4 to 5.0 (render.SUPPORTED_BLENDER; the API differences are behind `bpy.app.version` checks), or
with `bpy` from PyPI as `python clevr_scene.py --jobs JOBS.json` (the Blender 4.x/5.x check in the tests).

JOBS.json holds `settings` (resolution, samples, placement rules, jitter, CLEVR vocabulary) and `images`, each with a
`key`, a staging `dir`, a `scene_seed` string and either `num_objects` (random CLEVR layout) or
`layout` (requested objects at given pixel positions). For every image the script writes
`<key>.png`, `<key>.mask.png` and, last, `<key>.json` (its presence marks the image complete), then
prints `LCSBENCH_DONE <key> <seconds>` on stdout. The scene of an image depends only on its
`scene_seed`, never on which process renders it or in which order.

The scene follows CLEVR (Johnson et al. 2017): ground,
camera and three jittered area lights, cube/sphere/cylinder in rubber/metal, 8 colours, 2 sizes,
CLEVR's min-distance and direction-margin placement rules, plus an in-frame check on object centres
and a ray-cast visibility check that also yields the instance mask.
"""

import argparse
import hashlib
import json
import math
import os
import random
import struct
import sys
import time
import zlib

import bpy  # noqa: E402  (imported before bmesh, as bpy >= 4 requires)
import bmesh
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

# ---- CLEVR constants (clevr-facts.md section 1) -------------------------------------------------

# CLEVR's vocabulary (colours as 0-255 RGB, shapes, materials, sizes as half-extents) arrives in the
# jobs file from lcsbench/data/scenes.py, its one source: this script cannot import lcsbench.
COLORS, SHAPES, MATERIALS, SIZES = {}, (), (), {}
CAMERA_BASE = (7.48, -6.51, 5.34)
LIGHTS = (  # name, base position, size (m), power (W), colour
    ("key", (6.45, -2.91, 4.26), 0.5, 100.0, (1.0, 0.93, 0.82)),
    ("fill", (-4.67, -4.01, 3.01), 0.5, 30.0, (0.76, 0.82, 1.0)),
    ("back", (-1.17, 2.65, 5.82), 1.0, 50.0, (1.0, 1.0, 1.0)),
)
SUN_POSITION, SUN_STRENGTH = (11.7, -6.6, 25.8), 0.45
# Blender 4.0's Principled BSDF renamed "Specular" (0.5 = F0 of 4%) to "Specular IOR Level" (0.5 = the IOR's own
# F0 of 4% at IOR 1.5): the same value gives the same reflectance at normal incidence.
SPECULAR_INPUT = "Specular IOR Level" if bpy.app.version >= (4, 0, 0) else "Specular"
GROUND_GRAY = 0.8
# CLEVR restarts a layout forever when an object cannot be placed; we give up after this many layouts. 12
# objects (render.MAX_OBJECTS) fit in about 1 of 2,000 layouts (measured with the default rules), so this
# bound fails them with probability ~1e-11, and an impossible request fails in seconds (~0.2 ms a layout).
MAX_PLACEMENT_RESTARTS = 50_000


class SceneDoesNotFit(RuntimeError):
    """The requested objects cannot be placed (or seen) in the frame under the placement rules."""


def jitter(rng, amount):
    """CLEVR's rand(L) = 2L(u - 0.5), independently per axis."""
    return 2.0 * amount * (rng.random() - 0.5)


def aim_at_origin(obj):
    obj.rotation_euler = (-obj.location).to_track_quat("-Z", "Y").to_euler()


# ---- scene construction (once per process) ------------------------------------------------------


def build_meshes():
    """Shared unit meshes (half-extent 1, centred on the origin), one material slot each."""
    meshes = {}

    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=2.0)
    bmesh.ops.bevel(bm, geom=list(bm.edges), offset=0.12, segments=4, affect="EDGES", profile=0.5)
    meshes["cube"] = bm

    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=48, v_segments=24, radius=1.0)
    meshes["sphere"] = bm

    bm = bmesh.new()
    bmesh.ops.create_cone(bm, cap_ends=True, segments=48, radius1=1.0, radius2=1.0, depth=2.0)
    rims = [e for e in bm.edges if all(abs(abs(v.co.z) - 1.0) < 1e-6 for v in e.verts)
            and not e.is_boundary and len(e.link_faces) == 2
            and abs(e.link_faces[0].normal.z) != abs(e.link_faces[1].normal.z)]
    bmesh.ops.bevel(bm, geom=rims, offset=0.06, segments=3, affect="EDGES", profile=0.5)
    meshes["cylinder"] = bm

    result = {}
    for name, bm in meshes.items():
        mesh = bpy.data.meshes.new(name)
        bm.to_mesh(mesh)
        bm.free()
        for polygon in mesh.polygons:
            polygon.use_smooth = True
        smooth_below_angle(mesh, math.radians(40.0))
        mesh.materials.append(None)
        result[name] = mesh
    return result


def smooth_below_angle(mesh, angle):
    """Smooth shading across edges whose faces meet at less than `angle`, sharp across the rest: auto smooth
    before Blender 4.1, which replaced it by sharp edges marked from the angle (same shading)."""
    if bpy.app.version >= (4, 1, 0):
        mesh.set_sharp_from_angle(angle=angle)
    else:
        mesh.use_auto_smooth = True
        mesh.auto_smooth_angle = angle


def build_materials():
    """16 Principled materials: CLEVR RGB/255 used directly as linear colour, rubber or metal."""
    materials = {}
    for color_name, rgb in COLORS.items():
        for material_name in MATERIALS:
            mat = bpy.data.materials.new(f"{material_name}_{color_name}")
            mat.use_nodes = True
            bsdf = mat.node_tree.nodes["Principled BSDF"]
            bsdf.inputs["Base Color"].default_value = (*[c / 255.0 for c in rgb], 1.0)
            if material_name == "rubber":
                bsdf.inputs["Metallic"].default_value = 0.0
                bsdf.inputs["Roughness"].default_value = 0.65
                bsdf.inputs[SPECULAR_INPUT].default_value = 0.3
            else:
                bsdf.inputs["Metallic"].default_value = 1.0
                bsdf.inputs["Roughness"].default_value = 0.2
            materials[(material_name, color_name)] = mat
    return materials


def build_static_scene(settings):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.view_settings.view_transform = "Standard"  # Filmic would wash out CLEVR's colours
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = settings["samples"]
    scene.cycles.use_denoising = False  # Debian's 3.4 build has no OpenImageDenoise
    scene.cycles.use_adaptive_sampling = True
    scene.cycles.max_bounces = 4
    scene.cycles.caustics_reflective = False
    scene.cycles.caustics_refractive = False
    scene.cycles.blur_glossy = 2.0
    scene.render.resolution_x = settings["width"]
    scene.render.resolution_y = settings["height"]
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.color_depth = "8"
    scene.render.film_transparent = False
    for name in dir(scene.render):  # no date/render-time metadata: same scene, same PNG bytes
        if name.startswith("use_stamp"):
            setattr(scene.render, name, False)

    world = bpy.data.worlds.new("black")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.0
    scene.world = world

    bpy.ops.mesh.primitive_plane_add(size=2000.0, location=(0.0, 0.0, 0.0))
    ground = bpy.context.active_object
    ground.name = "ground"
    ground_mat = bpy.data.materials.new("ground")
    ground_mat.use_nodes = True
    nodes = ground_mat.node_tree.nodes
    nodes.remove(nodes["Principled BSDF"])
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Color"].default_value = (GROUND_GRAY, GROUND_GRAY, GROUND_GRAY, 1.0)
    ground_mat.node_tree.links.new(diffuse.outputs["BSDF"], nodes["Material Output"].inputs["Surface"])
    ground.data.materials.append(ground_mat)

    camera_data = bpy.data.cameras.new("camera")
    camera_data.lens = 35.0
    if settings["fov"] == "crop":
        # CLEVR's 320x240 frame has a 24 mm vertical extent on its 32 mm sensor: a vertical fit
        # with a 24 mm sensor keeps CLEVR's vertical FOV, so a square frame is its centre crop.
        camera_data.sensor_fit = "VERTICAL"
        camera_data.sensor_height = 24.0
    else:  # "full": CLEVR's horizontal FOV, a square frame shows more ground above and below
        camera_data.sensor_fit = "HORIZONTAL"
        camera_data.sensor_width = 32.0
    camera = bpy.data.objects.new("camera", camera_data)
    scene.collection.objects.link(camera)
    scene.camera = camera

    lights = []
    for name, _, size, power, color in LIGHTS:
        data = bpy.data.lights.new(name, type="AREA")
        data.size = size
        data.energy = power
        data.color = color
        light = bpy.data.objects.new(name, data)
        scene.collection.objects.link(light)
        lights.append(light)
    sun_data = bpy.data.lights.new("sun", type="SUN")
    sun_data.energy = SUN_STRENGTH
    sun = bpy.data.objects.new("sun", sun_data)
    sun.location = SUN_POSITION
    scene.collection.objects.link(sun)
    aim_at_origin(sun)
    return scene, camera, lights


# ---- layout (CLEVR's placement rules, clevr-facts.md section 1 "Placement") --------------------


def ground_directions(camera):
    """CLEVR's ground-plane directions from the camera: behind = camera -Z, left = camera -X."""
    rotation = camera.matrix_world.to_quaternion()
    behind = rotation @ Vector((0.0, 0.0, -1.0))
    left = rotation @ Vector((-1.0, 0.0, 0.0))
    behind.z = 0.0
    left.z = 0.0
    behind.normalize()
    left.normalize()
    return {"behind": behind, "front": -behind, "left": left, "right": -left,
            "above": Vector((0.0, 0.0, 1.0)), "below": Vector((0.0, 0.0, -1.0))}


def sample_positions(rng, num_objects, directions, settings, max_restarts=MAX_PLACEMENT_RESTARTS):
    """Sizes and (x, y) by rejection; restart the whole layout after max_retries for one object.

    CLEVR's rule: a new object keeps min_dist between surfaces to every placed one, and a margin along the
    left/right/front/behind directions. right = -left and front = -behind, so the four margin tests are
    two: 0 < |offset . left| < margin and 0 < |offset . behind| < margin (exact in floating point). This
    loop is the hot path of many-object scenes (millions of tests at 12 objects), hence the inlining; it
    draws the same random numbers in the same order as the plain rule, so a seed gives the same layout.
    CLEVR restarts forever; here `max_restarts` layouts are tried, then SceneDoesNotFit names what cannot fit.
    """
    lx, ly = directions["left"].x, directions["left"].y
    bx, by = directions["behind"].x, directions["behind"].y
    min_dist, margin, retries = settings["min_dist"], settings["margin"], settings["max_retries"]
    size_names = sorted(SIZES)
    random, hypot = rng.random, math.hypot  # -3 + 6 * random() is rng.uniform(-3, 3), bit for bit
    most_placed = 0
    for _ in range(max_restarts):
        placed = []  # (x, y, radius, size name)
        for _ in range(num_objects):
            size_name = rng.choice(size_names)
            radius = SIZES[size_name]
            for _ in range(retries):
                x, y = -3.0 + 6.0 * random(), -3.0 + 6.0 * random()
                for other_x, other_y, other_radius, _ in placed:
                    dx, dy = x - other_x, y - other_y
                    if hypot(dx, dy) - radius - other_radius < min_dist:
                        break
                    side, depth = abs(dx * lx + dy * ly), abs(dx * bx + dy * by)
                    if 0.0 < side < margin or 0.0 < depth < margin:
                        break
                else:
                    placed.append((x, y, radius, size_name))
                    break
            else:
                break
        if len(placed) == num_objects:
            return [{"size": name, "radius": radius, "x": x, "y": y} for x, y, radius, name in placed]
        most_placed = max(most_placed, len(placed))
    sizes = ", ".join(f"{name} {2 * SIZES[name]:g}" for name in sorted(SIZES))
    raise SceneDoesNotFit(
        f"{num_objects} objects do not fit: in {max_restarts} layouts at most {most_placed} could be placed on "
        f"CLEVR's 6x6 ground (object sizes {sizes} scene units, min_dist {min_dist:g}, margin {margin:g}, "
        f"image {settings['width']}x{settings['height']} px). Render fewer objects per image (--counts), or "
        f"lower --min-dist / --margin")


def draw_attributes(rng, positions):
    objects = []
    for position in positions:
        objects.append({
            **position,
            "shape": rng.choice(SHAPES),
            "color": rng.choice(sorted(COLORS)),
            "material": rng.choice(MATERIALS),
            "rotation": 360.0 * rng.random(),
        })
    return objects


def requested_objects(rng, layout, scene, camera, settings):
    """Objects at requested pixel positions: each centre is put where its camera ray crosses z = r."""
    width, height = settings["width"], settings["height"]
    origin, frame = camera_frame(scene, camera)
    objects = []
    for spec in layout:
        size_name = spec.get("size") or rng.choice(sorted(SIZES))
        radius = SIZES[size_name]
        px, py = spec["pixel"]
        direction = pixel_ray(frame, px / width, py / height)
        if direction.z >= 0.0:
            raise ValueError(f"requested pixel {spec['pixel']} looks above the horizon: no ground there")
        t = (radius - origin.z) / direction.z
        point = origin + t * direction
        objects.append({
            "size": size_name, "radius": radius, "x": point.x, "y": point.y,
            "shape": spec.get("shape") or rng.choice(SHAPES),
            "color": spec.get("color") or rng.choice(sorted(COLORS)),
            "material": spec.get("material") or rng.choice(MATERIALS),
            "rotation": 360.0 * rng.random(),
        })
    return objects


# ---- camera geometry, projection and ray-cast visibility ----------------------------------------


def camera_frame(scene, camera):
    """Camera origin and the world-space frame corners (top-left, top-right, bottom-left)."""
    corners = camera.data.view_frame(scene=scene)  # top-right, bottom-right, bottom-left, top-left
    to_world = camera.matrix_world.to_3x3()
    top_right, _, bottom_left, top_left = (to_world @ corner for corner in corners)
    return camera.matrix_world.translation.copy(), (top_left, top_right, bottom_left)


def pixel_ray(frame, u, v):
    """Unit ray direction through image point (u, v), fractions from the top-left corner."""
    top_left, top_right, bottom_left = frame
    return (top_left + u * (top_right - top_left) + v * (bottom_left - top_left)).normalized()


def pixel_coords(scene, camera, location, width, height):
    """Float pixel position of a 3D point: origin top-left, pixel i covers [i, i+1); plus depth."""
    u, v, depth = world_to_camera_view(scene, camera, location)
    return [u * width, (1.0 - v) * height, depth]


def instance_mask(scene, camera, id_of, width, height):
    """One ray per pixel centre; returns row-major bytes (0 = ground/sky, k = object with id k)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    origin, frame = camera_frame(scene, camera)
    mask = bytearray(width * height)
    for row in range(height):
        v = (row + 0.5) / height
        for col in range(width):
            hit, _, _, _, obj, _ = scene.ray_cast(depsgraph, origin, pixel_ray(frame, (col + 0.5) / width, v))
            if hit and obj is not None:
                mask[row * width + col] = id_of.get(obj.name, 0)
    return mask


def strip_png_text(path):
    """Drop text chunks (Cycles writes render times there), so the same scene gives the same bytes."""
    with open(path, "rb") as handle:
        data = handle.read()
    kept, offset = [data[:8]], 8
    while offset < len(data):
        length = struct.unpack(">I", data[offset:offset + 4])[0]
        end = offset + 12 + length
        if data[offset + 4:offset + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            kept.append(data[offset:end])
        offset = end
    with open(path, "wb") as handle:
        handle.write(b"".join(kept))


def write_gray_png(path, data, width, height):
    """8-bit grayscale PNG with the standard library only."""
    raw = b"".join(b"\x00" + bytes(data[row * width:(row + 1) * width]) for row in range(height))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


# ---- one image ----------------------------------------------------------------------------------


class SceneBuilder:
    def __init__(self, settings):
        self.settings = settings
        self.scene, self.camera, self.lights = build_static_scene(settings)
        self.meshes = build_meshes()
        self.materials = build_materials()
        self.objects = []

    def clear_objects(self):
        for obj in self.objects:
            bpy.data.objects.remove(obj, do_unlink=True)
        self.objects = []

    def place_camera_and_lights(self, rng):
        cam_jitter, light_jitter = self.settings["camera_jitter"], self.settings["light_jitter"]
        self.camera.location = [c + jitter(rng, cam_jitter) for c in CAMERA_BASE]
        aim_at_origin(self.camera)
        for light, (_, base, _, _, _) in zip(self.lights, LIGHTS):
            light.location = [c + jitter(rng, light_jitter) for c in base]
            aim_at_origin(light)
        bpy.context.view_layer.update()  # matrix_world is stale until the view layer updates

    def add_objects(self, objects):
        self.clear_objects()
        for index, spec in enumerate(objects):
            obj = bpy.data.objects.new(f"object{index + 1}", self.meshes[spec["shape"]])
            obj.scale = (spec["radius"],) * 3
            obj.location = (spec["x"], spec["y"], spec["radius"])
            obj.rotation_euler = (0.0, 0.0, math.radians(spec["rotation"]))
            obj.material_slots[0].link = "OBJECT"
            obj.material_slots[0].material = self.materials[(spec["material"], spec["color"])]
            self.scene.collection.objects.link(obj)
            self.objects.append(obj)
        bpy.context.view_layer.update()

    def describe(self, objects):
        width, height = self.settings["width"], self.settings["height"]
        records = []
        for index, (spec, obj) in enumerate(zip(objects, self.objects)):
            records.append({
                "shape": spec["shape"], "size": spec["size"], "material": spec["material"],
                "color": spec["color"],
                "3d_coords": [spec["x"], spec["y"], spec["radius"]],
                "rotation": spec["rotation"],
                "pixel_coords": pixel_coords(self.scene, self.camera, obj.location, width, height),
                "mask_id": index + 1,
            })
        return records

    def random_layout(self, rng, num_objects):
        """CLEVR layout plus in-frame and visibility checks; retries until a layout passes both."""
        settings = self.settings
        width, height = settings["width"], settings["height"]
        min_visible = max(1, math.ceil(settings["min_visible_fraction"] * width * height))
        directions = ground_directions(self.camera)
        for attempt in range(1, settings["max_layout_attempts"] + 1):
            objects = draw_attributes(rng, sample_positions(rng, num_objects, directions, settings))
            self.add_objects(objects)
            records = self.describe(objects)
            if not all(0.0 <= r["pixel_coords"][0] < width and 0.0 <= r["pixel_coords"][1] < height
                       for r in records):
                continue
            mask = instance_mask(self.scene, self.camera, self.mask_ids(), width, height)
            visible = [mask.count(r["mask_id"]) for r in records]
            if min(visible) >= min_visible:
                return objects, records, mask, visible, attempt
        raise SceneDoesNotFit(
            f"{num_objects} objects do not fit: no layout of them passed the in-frame and visibility checks "
            f"in {settings['max_layout_attempts']} attempts (every object must show {min_visible} of the "
            f"{width}x{height} px; object sizes {', '.join(f'{n} {2 * SIZES[n]:g}' for n in sorted(SIZES))} "
            f"scene units). Render fewer objects per image (--counts), a higher --resolution, or lower "
            f"--min-visible-fraction")

    def mask_ids(self):
        return {obj.name: index + 1 for index, obj in enumerate(self.objects)}

    def render(self, job):
        settings = self.settings
        width, height = settings["width"], settings["height"]
        rng = random.Random(job["scene_seed"])
        self.place_camera_and_lights(rng)
        if "layout" in job:
            objects = requested_objects(rng, job["layout"], self.scene, self.camera, settings)
            self.add_objects(objects)
            records = self.describe(objects)
            mask = instance_mask(self.scene, self.camera, self.mask_ids(), width, height)
            visible = [mask.count(r["mask_id"]) for r in records]
            attempts = 1
        else:
            objects, records, mask, visible, attempts = self.random_layout(rng, job["num_objects"])
        for record, count in zip(records, visible):
            record["visible_pixels"] = count

        directions = ground_directions(self.camera)
        seed_int = int(hashlib.sha256(job["scene_seed"].encode()).hexdigest(), 16) % (2 ** 31)
        self.scene.cycles.seed = seed_int
        key, out_dir = job["key"], job["dir"]
        partial_png = os.path.join(out_dir, f".{key}.partial.png")
        self.scene.render.filepath = partial_png
        start = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        render_seconds = time.perf_counter() - start
        if not os.path.exists(partial_png):
            raise RuntimeError(f"Cycles wrote no image for {key}: see the 'Error:' lines above")
        strip_png_text(partial_png)
        os.replace(partial_png, os.path.join(out_dir, f"{key}.png"))
        write_gray_png(os.path.join(out_dir, f"{key}.mask.png"), mask, width, height)

        record = {
            "split": job["split"], "image_index": job["image_index"], "image_filename": f"{key}.png",
            "mask_filename": f"{key}.mask.png", "num_objects": len(records),
            "width": width, "height": height, "objects": records,
            "directions": {name: list(vec) for name, vec in directions.items()},
            "relationships": relationships(objects, directions),
            "camera": {"location": list(self.camera.location), "lens_mm": self.camera.data.lens,
                       "fov": settings["fov"]},
            "lights": [{"name": light.name, "location": list(light.location)} for light in self.lights],
            "layout_attempts": attempts, "scene_seed": job["scene_seed"], "cycles_seed": seed_int,
            "samples": settings["samples"],
        }
        partial_json = os.path.join(out_dir, f".{key}.partial.json")
        with open(partial_json, "w") as handle:
            json.dump(record, handle)
        os.replace(partial_json, os.path.join(out_dir, f"{key}.json"))
        return render_seconds


def relationships(objects, directions):
    """CLEVR's spatial relations: j is `name` of i when (c_j - c_i) . dir > 0.2."""
    relations = {}
    for name in ("left", "right", "front", "behind"):
        d = directions[name]
        relations[name] = [
            [j for j, other in enumerate(objects)
             if j != i and (other["x"] - obj["x"]) * d.x + (other["y"] - obj["y"]) * d.y > 0.2]
            for i, obj in enumerate(objects)
        ]
    return relations


def main(argv):
    parser = argparse.ArgumentParser(prog="clevr_scene.py")
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with open(args.jobs) as handle:
        jobs = json.load(handle)
    global COLORS, SHAPES, MATERIALS, SIZES
    settings = jobs["settings"]
    COLORS, SIZES = settings["colors"], settings["sizes"]
    SHAPES, MATERIALS = tuple(settings["shapes"]), tuple(settings["materials"])
    builder = SceneBuilder(jobs["settings"])
    builder.scene.render.threads_mode = "FIXED"
    builder.scene.render.threads = args.threads
    for job in jobs["images"]:
        try:
            seconds = builder.render(job)
        except SceneDoesNotFit as error:  # a request no retry can mend: one line for render.py to report
            print(f"LCSBENCH_ERROR {job['key']}: {error}", flush=True)
            raise
        print(f"LCSBENCH_DONE {job['key']} {seconds:.4f}", flush=True)


if __name__ == "__main__":
    # `blender -b -P clevr_scene.py -- ARGS`, or `python clevr_scene.py ARGS` where bpy is a Python module (PyPI)
    main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:])
