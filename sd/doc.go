package sd
