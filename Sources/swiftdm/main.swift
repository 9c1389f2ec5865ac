print("swiftdm")
