"""The image builder: initramfs with a frozen Python runtime, squashfs root, hybrid ISO, USB image."""
