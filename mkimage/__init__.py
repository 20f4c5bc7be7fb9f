"""The image builder: initramfs with a frozen Python, squashfs root, hybrid ISO, USB image."""
