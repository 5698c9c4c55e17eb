from personachat.admin.cli import main

main()
