//! Unit tests of the pieces whose rounding is easy to get wrong.

use super::*;

#[test]
fn shortest_edge_truncates_the_long_side() {
    // 224 * 500 / 333 = 336.336... -> 336; 224 * 640 / 427 = 335.73... -> 335 (not 336).
    assert_eq!(
        resize_dims(333, 500, ResizeTarget::ShortestEdge(224)),
        (224, 336)
    );
    assert_eq!(
        resize_dims(640, 427, ResizeTarget::ShortestEdge(224)),
        (335, 224)
    );
    assert_eq!(
        resize_dims(100, 100, ResizeTarget::ShortestEdge(224)),
        (224, 224)
    );
}

#[test]
fn center_crop_uses_floor_offset_and_zero_pads() {
    let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 1]));
    let c = center_crop(&img, 3, 2);
    // top = (4 - 3) // 2 = 0, left = (5 - 2) // 2 = 1
    assert_eq!(c.get_pixel(0, 0).0, [1, 0, 1]);
    let p = center_crop(&img, 6, 5);
    // top = (4 - 6) // 2 = -1: the first row is padding
    assert_eq!(p.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(p.get_pixel(2, 1).0, [2, 0, 1]);
}

#[test]
fn family_defaults_apply_to_missing_fields() {
    let clip =
        ProcessorConfig::from_json_str(r#"{"image_processor_type": "CLIPImageProcessor"}"#, "t")
            .unwrap();
    assert_eq!(
        clip,
        ProcessorConfig {
            image_processor_type: Some("CLIPImageProcessor".into()),
            ..ProcessorConfig::defaults(ProcessorFamily::Clip)
        }
    );
    let blip = ProcessorConfig::from_json_str(
        r#"{"image_processor_type": "BlipImageProcessor", "size": 64, "image_mean": 0.5}"#,
        "t",
    )
    .unwrap();
    assert_eq!(
        blip.size,
        ResizeTarget::Exact {
            height: 64,
            width: 64
        }
    );
    assert!(!blip.do_center_crop);
    assert_eq!(blip.image_mean, [0.5; 3]);
    let old_clip = ProcessorConfig::from_json_str(r#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": 32, "crop_size": 30, "resample": null}"#, "t").unwrap();
    assert_eq!(old_clip.size, ResizeTarget::ShortestEdge(32));
    assert_eq!(old_clip.crop_size, Some((30, 30)));
    assert_eq!(old_clip.resample, Resample::Bicubic);
}

#[test]
fn bad_configs_are_refused_with_their_origin() {
    let err = ProcessorConfig::from_json_str(r#"{"resample": 9}"#, "my/preprocessor_config.json")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("my/preprocessor_config.json") && msg.contains("resample 9"),
        "{msg}"
    );
    assert!(ProcessorConfig::from_json_str(
        r#"{"image_processor_type": "SiglipImageProcessor"}"#,
        "t"
    )
    .is_err());
    assert!(ProcessorConfig::from_json_str(r#"{"image_std": [1, 2]}"#, "t").is_err());
    let mut cfg = ProcessorConfig::defaults(ProcessorFamily::Blip);
    cfg.do_center_crop = true;
    assert!(ImageProcessor::from_config(cfg).is_err());
}

#[test]
fn identity_settings_give_raw_values_in_chw_order() {
    let mut cfg = ProcessorConfig::defaults(ProcessorFamily::Blip);
    cfg.size = ResizeTarget::Exact {
        height: 1,
        width: 2,
    };
    cfg.do_normalize = false;
    let p = ImageProcessor::from_config(cfg).unwrap();
    let img = RgbImage::from_raw(2, 1, vec![0, 51, 102, 255, 204, 153]).unwrap();
    let t = p.preprocess(&img).unwrap();
    assert_eq!(t.dims(), &[3, 1, 2]);
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v, vec![0.0, 1.0, 0.2, 0.8, 0.4, 0.6]);
    let b = p
        .preprocess_batch(&[img.clone(), img], &Device::Cpu)
        .unwrap();
    assert_eq!(b.dims(), &[2, 3, 1, 2]);
}

#[test]
fn nested_processor_config_reads_the_image_processor_part() {
    let json = r#"{
        "image_processor": {"image_processor_type": "BlipImageProcessor",
                            "size": {"height": 32, "width": 32}, "resample": 3},
        "num_query_tokens": 8,
        "processor_class": "Blip2Processor"
    }"#;
    let cfg = ProcessorConfig::from_json_str(json, "processor_config.json").unwrap();
    let proc = ImageProcessor::from_config(cfg).unwrap();
    assert_eq!(proc.output_size(), (32, 32));
}

#[test]
fn huge_shortest_edge_is_refused_at_load() {
    let json =
        r#"{"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 100000}}"#;
    let config = ProcessorConfig::from_json_str(json, "p.json").unwrap();
    let err = ImageProcessor::from_config(config).unwrap_err().to_string();
    assert!(err.contains("size.shortest_edge = 100000"), "{err}");

    let json = r#"{"image_processor_type": "BlipImageProcessor", "size": {"height": 8000, "width": 8000}}"#;
    let config = ProcessorConfig::from_json_str(json, "p.json").unwrap();
    assert!(ImageProcessor::from_config(config).is_err());
}

#[test]
fn thin_strip_resize_is_refused_before_allocating() {
    // 224 x 4480000 pixels after the resize: 3 GB, then cropped to 224 x 224.
    let strip = RgbImage::new(1, 20_000);
    let p = ImageProcessor::from_config(ProcessorConfig::defaults(ProcessorFamily::Clip)).unwrap();
    let err = p.preprocess(&strip).unwrap_err().to_string();
    assert!(
        err.contains("1x20000") && err.contains("size.shortest_edge = 224"),
        "{err}"
    );
    // An ordinary photo shape still goes through.
    assert!(p.preprocess(&RgbImage::new(64, 48)).is_ok());
}
